"""``location:`` where the recorder stands (carried in every detection message)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from edge.config.base import Section


class LocationConfig(Section):
    name: str = ""
    latitude: Optional[float] = Field(None, ge=-90, le=90)
    longitude: Optional[float] = Field(None, ge=-180, le=180)
