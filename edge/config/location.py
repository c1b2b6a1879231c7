"""``location:`` where the recorder stands (carried in every detection message)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from edge.config.base import Section


class LocationConfig(Section):
    name: str = ""
    latitude: Optional[float] = Field(None, ge=-90, le=90)
    longitude: Optional[float] = Field(None, ge=-180, le=180)
    # IANA zone of the recorder's local time: file names without a zone, the "day" of notifications
    timezone: Optional[str] = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: Optional[str]) -> Optional[str]:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if v and v.upper() not in ("UTC", "Z", "GMT"):
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}: use an IANA name such as Europe/Berlin, or UTC") from None
        return v or None
