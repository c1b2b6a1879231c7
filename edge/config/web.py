"""``web:`` the local dashboard (``python -m edge web``, or a daemon service with ``enabled``: the daemon
then keeps clips too, within ``clips.max_disk_mb``). See ``edge.outputs.web`` and docs/dashboard.md."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from edge.config.base import Section


class WebConfig(Section):
    enabled: bool = False  # run the dashboard inside the daemon (it then keeps clips)
    listen: str = "127.0.0.1:8080"  # any other host than loopback needs password_file
    password_file: Optional[Path] = None  # default <state_dir>/web.password
    timezone: Optional[str] = None  # IANA name for days and hours on the pages; default the system's
    page_size: int = Field(50, ge=10, le=500)
    cache_dir: Optional[Path] = None  # spectrogram PNGs; default <state_dir>/web-cache
    reviewed_clips_dir: Optional[Path] = None  # clips of reviewed detections; default <state_dir>/reviewed-clips

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        from edge.outputs.web.listen import split_listen  # standard library only

        split_listen(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}: use an IANA name such as Europe/Paris, or leave it out") from None
        return v

    def paths(self, state_dir: Path) -> dict[str, Path]:
        return {"password_file": self.password_file or state_dir / "web.password",
                "cache_dir": self.cache_dir or state_dir / "web-cache",
                "reviewed_clips_dir": self.reviewed_clips_dir or state_dir / "reviewed-clips"}
