"""Listening sessions: the effort table, the record of when and how the recorder listened.

A session is one stretch of listening to one source with one model and one
set of settings: it opens with the source's first audio (or when the device
opens), its end is refreshed every ``refresh_s`` seconds (so a crash leaves
it at most that stale), and it closes when the source ends or the device
closes. A model change (a new version or new bytes: a new version of the
same network, e.g. new thresholds, is a new session too) closes it and opens
the next one at that moment.

A session's id is a UUID5 of (device, source, start, model version and hash,
settings), where the start is the UTC time for live capture and the offset
in the source for files (as for detection ids): the same file replayed
again with the same model and settings rewrites its row instead of adding
one; live sessions start at different times and so get different ids. The runtime drives this for both ``run`` and
``replay``.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Optional

from edge.contract.record import format_utc
from edge.detection.postprocess import ID_NAMESPACE

if TYPE_CHECKING:
    from edge.contract.bundle import Bundle
    from edge.outputs.store import Store

log = logging.getLogger(__name__)


class Sessions:
    """Opens, refreshes and closes effort rows in ``store`` (nothing at all without a store)."""

    def __init__(self, store: Optional[Store], device_id: str, *, refresh_s: float,
                 settings: Callable[[], dict[str, Any]], on_model_change: Callable[[Bundle], None] | None = None):
        self.store = store
        self.device_id = device_id
        self.refresh_s = refresh_s
        self._settings = settings
        self._on_model_change = on_model_change
        self.id: Optional[str] = None
        self._model: tuple[str, str] = ("", "")
        self._touched = 0.0

    def open(self, at: datetime, source: str, bundle: Bundle, *, offset_s: Optional[float] = None) -> None:
        """Start a session at ``at`` (``offset_s`` into a file; None: live), closing any open one there first."""
        if self.id is not None:
            self.close(at)
        settings = self._settings()
        t = format_utc(at)
        start_key = f"utc:{t}" if offset_s is None else f"offset:{offset_s:.3f}"
        key = "\x1f".join((self.device_id, source, start_key, bundle.version, bundle.sha256,
                           json.dumps(settings, sort_keys=True, default=str)))
        self.id = str(uuid.uuid5(ID_NAMESPACE, key))
        self._model = (bundle.version, bundle.sha256)
        self._touched = time.monotonic()
        if self.store is None:
            return
        try:
            self.store.open_effort(id=self.id, device_id=self.device_id, source=source, start_utc=t,
                                   model_version=bundle.version, model_sha256=bundle.sha256, settings=settings)
        except Exception as exc:  # a full disk must not stop the listening
            log.error("cannot record the listening session: %s", exc)

    def ensure_open(self, at: datetime, source: str, bundle: Bundle, *, offset_s: Optional[float] = None) -> None:
        """Audio from ``at`` on: open a session unless one is open."""
        if self.id is None:
            self.open(at, source, bundle, offset_s=offset_s)

    def tick(self, start: datetime, end: datetime, source: str, bundle: Bundle, *,
             offset_s: Optional[float] = None) -> None:
        """A block from ``start`` to ``end`` went through ``bundle``: a new session from ``start`` if the
        model changed (swaps happen between blocks), else the session's end refreshed now and then."""
        if self.id is None:
            return
        if (bundle.version, bundle.sha256) != self._model:
            self.close(start)
            self.open(start, source, bundle, offset_s=offset_s)
            if self._on_model_change is not None:
                self._on_model_change(bundle)
        elif time.monotonic() - self._touched > self.refresh_s:
            self._touched = time.monotonic()
            self._set_end(end, "update")

    def close(self, at: datetime) -> None:
        """End the open session (if any) at ``at``."""
        if self.id is None:
            return
        self._set_end(at, "close")
        self.id = None

    def _set_end(self, at: datetime, what: str) -> None:
        if self.store is None or self.id is None:
            return
        try:
            self.store.close_effort(self.id, format_utc(at))
        except Exception as exc:
            log.error("cannot %s the listening session: %s", what, exc)
