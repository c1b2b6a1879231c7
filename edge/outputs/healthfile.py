"""The daemon's health report on disk (``<state_dir>/health.json``), for the dashboard.

Every ``interval_s`` (and at start and stop) the health snapshot, the MQTT
state and the daemon's pid are written atomically (temporary file, rename), so
a ``python -m edge web`` in another process always reads a whole report; its
age tells whether the daemon is still alive.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from edge.contract.record import utc_now
from edge.types import Service
from edge.files import atomic_write

log = logging.getLogger(__name__)

FILE_NAME = "health.json"


def mqtt_state(publisher: Any) -> dict:
    """What the dashboard shows of the MQTT link (``{"enabled": False}`` without a publisher)."""
    if publisher is None:
        return {"enabled": False}
    out: dict[str, Any] = {"enabled": True}
    try:
        out["connected"] = bool(publisher.connected)
        out.update(publisher.mqtt_stats())
    except Exception as exc:  # noqa: BLE001 - a report must not fail on it
        out["error"] = str(exc)
    return out


def report(snapshot: Callable[[], dict], publisher: Any = None, state: Optional[str] = None) -> dict:
    health = dict(snapshot())
    if state:
        health["state"] = state
    return {"written_utc": utc_now(),
            "pid": os.getpid(), "health": health, "mqtt": mqtt_state(publisher)}


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, default=str))


class HealthFile(Service):
    """A daemon service: start/stop, writing the report every ``interval_s`` on its own thread."""

    name = "health_file"

    def __init__(self, path: str | Path, snapshot: Callable[[], dict], *, interval_s: float = 30.0,
                 publisher: Any = None):
        self.path = Path(path)
        self.snapshot = snapshot
        self.interval_s = float(interval_s)
        self.publisher = publisher
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write_now(self, state: Optional[str] = None) -> None:
        try:
            write(self.path, report(self.snapshot, self.publisher, state))
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the daemon
            log.error("cannot write the health report %s: %s", self.path, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_now()

    def start(self) -> None:
        self.write_now()
        self._thread = threading.Thread(target=self._run, name="healthfile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.write_now(state="stopped")


def service_factory(ctx: Any) -> HealthFile:
    """For the daemon's service list: always (the report is small; a dashboard in another process reads it)."""
    return HealthFile(Path(ctx.cfg.state_dir) / FILE_NAME, ctx.health.snapshot, interval_s=ctx.cfg.status_interval_s,
                      publisher=ctx.services.get("mqtt"))
