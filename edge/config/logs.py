"""``logging:`` the daemon's log level."""
from __future__ import annotations

from typing import Literal

from edge.config.base import Section


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
