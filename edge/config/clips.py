"""``clips:`` short audio clips saved around each detection (``edge.outputs.clips``)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edge.config.base import DEFAULT_STATE_DIR, Section


class ClipsConfig(Section):
    enabled: bool = False
    dir: Path = DEFAULT_STATE_DIR / "clips"
    padding_s: float = Field(1.0, ge=0, le=30)
    max_disk_mb: float = Field(1024, gt=0)
