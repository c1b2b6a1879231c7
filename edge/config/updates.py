"""``updates:`` signed model updates over MQTT: channel, downgrades, crash-loop rollback (``edge.service.updates``)."""
from __future__ import annotations

from pydantic import Field

from edge.config.base import Section


class UpdatesConfig(Section):
    enabled: bool = True
    channel: str = "stable"
    allow_downgrade: bool = False
    crash_loop_window_s: float = Field(300, gt=0)
    crash_loop_max: int = Field(3, ge=1)
