"""``store:`` the SQLite file of detections (also the MQTT outbox), effort and gaps (``edge.outputs.store``)."""
from __future__ import annotations

from pathlib import Path

from edge.config.base import DEFAULT_STATE_DIR, Section


class StoreConfig(Section):
    path: Path = DEFAULT_STATE_DIR / "detections.db"
