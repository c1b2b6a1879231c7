"""``notify:`` notifications through Apprise (``edge.service.alerts``; ``pip install 'dawnchorus[notify]'``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field, model_validator

from edge.config.base import Section


class NotifyConfig(Section):
    enabled: bool = False
    # Apprise URLs (ntfy://, tgram://, pover://, mailto://, json://...); tokens better in urls_file
    urls: list[str] = []
    urls_file: Optional[Path] = None  # one URL per line; '#' comments
    new_species: bool = True  # the first detection of a species on the local day
    watch_list: list[str] = []  # labels or common names; every detection (within cooldown_s)
    no_signal: bool = True  # the health's no-signal alarm
    no_signal_after: int = Field(20, ge=1)  # consecutive windows without signal (health no_signal_streak)
    model_update_failed: bool = True  # a refused model bundle or a rollback
    min_score: float = Field(0.0, ge=0, le=1)  # species notifications only at or above this score
    max_per_hour: int = Field(20, ge=1)
    cooldown_s: float = Field(3600, ge=0)  # the same watched species / alarm at most once per this
    queue_size: int = Field(100, ge=1, le=10000)
    timeout_s: float = Field(10, gt=0, le=300)

    @model_validator(mode="after")
    def _urls_when_enabled(self):
        if self.enabled and not self.urls and self.urls_file is None:
            raise ValueError("notify.enabled is true but no notify.urls or notify.urls_file is given "
                             "(add Apprise URLs such as ntfy://ntfy.sh/my-topic, or set enabled: false)")
        return self
