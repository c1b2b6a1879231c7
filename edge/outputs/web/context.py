"""Everything the dashboard needs, resolved once from the configuration (or given by a test)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from pathlib import Path
from typing import Callable, Optional

from edge.outputs.web.listen import is_loopback, split_listen

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"


@dataclass
class WebContext:
    db_path: Path
    clips_dir: Optional[Path]
    cache_dir: Path
    reviewed_clips_dir: Path
    password_file: Path
    models_dir: Optional[Path] = None
    bundle_path: Optional[Path] = None  # the configured model (when no update is installed)
    state_dir: Optional[Path] = None
    host: str = "127.0.0.1"
    port: int = 8080
    timezone: Optional[str] = None
    page_size: int = 50
    device_id: str = "recorder"
    health: Optional[Callable[[], dict]] = None  # live numbers (inside the daemon); else the health file
    status_interval_s: float = 30.0
    clip_padding_s: float = 1.0  # clips.padding_s: where the event lies in its clip
    extra: dict = field(default_factory=dict)

    @property
    def require_login(self) -> bool:
        """Pages need the password when the dashboard listens beyond this machine."""
        return not is_loopback(self.host)

    @property
    def tz(self) -> tzinfo:
        if self.timezone:
            from zoneinfo import ZoneInfo

            return ZoneInfo(self.timezone)
        return _local_tz()

    @property
    def health_file(self) -> Optional[Path]:
        return self.state_dir / HEALTH_FILE if self.state_dir else None

    def read_health(self) -> tuple[dict | None, float | None]:
        """(health report, its age in seconds): the live one, else the daemon's health file."""
        if self.health is not None:
            try:
                return self.health(), 0.0
            except Exception as exc:  # noqa: BLE001 - a page must not fail on it
                log.warning("cannot read the live health numbers: %s", exc)
                return None, None
        path = self.health_file
        if path is None:
            return None, None
        try:
            st = path.stat()
            return json.loads(path.read_text()), max(0.0, time.time() - st.st_mtime)
        except (OSError, ValueError):
            return None, None

    @classmethod
    def from_config(cls, cfg, listen: str | None = None, health: Optional[Callable[[], dict]] = None) -> "WebContext":
        web = cfg.web
        host, port = split_listen(listen or web.listen)
        paths = web.paths(cfg.state_dir)
        return cls(db_path=cfg.store.path, clips_dir=cfg.clips.dir, cache_dir=paths["cache_dir"],
                   reviewed_clips_dir=paths["reviewed_clips_dir"], password_file=paths["password_file"],
                   models_dir=cfg.model.models_dir or cfg.state_dir / "models", bundle_path=cfg.model.bundle_path,
                   state_dir=cfg.state_dir, host=host, port=port, timezone=web.timezone or getattr(cfg.location, "timezone", None), page_size=web.page_size,
                   device_id=cfg.device_id, health=health, status_interval_s=cfg.status_interval_s,
                   clip_padding_s=cfg.clips.padding_s)


def _local_tz() -> tzinfo:
    from datetime import datetime

    return datetime.now().astimezone().tzinfo or timezone.utc
