"""``store:`` the SQLite file of detections (also the MQTT outbox), effort and gaps (``edge.outputs.store``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from edge.config.base import DEFAULT_STATE_DIR, Section


class StoreConfig(Section):
    path: Path = DEFAULT_STATE_DIR / "detections.db"
    reserve_mb: float = Field(64, ge=0)  # free space kept on its file system: clips yield first (0: no floor)
    # retention (edge.outputs.retention): never unpublished (MQTT on) or reviewed detections
    keep_days: Optional[float] = Field(None, gt=0)  # None: keep forever
    max_mb: Optional[float] = Field(None, gt=0)  # used database pages; None: no cap
    prune_interval_s: float = Field(3600, ge=10)
