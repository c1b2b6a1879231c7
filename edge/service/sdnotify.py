"""systemd's notify protocol (sd_notify) with the socket module, no dependency.

``Notifier()`` reads ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket) and ``WATCHDOG_USEC``/``WATCHDOG_PID`` from the environment. Outside
systemd it does nothing. ``Watchdog`` is the thread that pings ``WATCHDOG=1``
at half the watchdog period, but only while the health object says audio
and inference are both progressing, and refreshes ``STATUS=`` with the
health summary.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or ""
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        self.address = addr or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_s = int(usec) / 1e6 or None
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if not self.address:
            return False
        msg = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(msg, self.address)
                return True
            except OSError as exc:
                log.debug("sd_notify %r failed: %s", fields, exc)
                return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """Pings the watchdog while ``progressing(grace_s)`` holds; sends STATUS every ``status_s``."""

    def __init__(self, notifier: Notifier, progressing: Callable[[float], bool], summary: Callable[[], str],
                 stop: threading.Event, *, status_s: float = 30.0, grace_s: float = 10.0):
        self.notifier = notifier
        self.progressing = progressing
        self.summary = summary
        self.stop_event = stop
        self.status_s = status_s
        self.interval = min(notifier.watchdog_s / 2, 5.0) if notifier.watchdog_s else min(status_s, 5.0)
        self.grace_s = max(grace_s, (notifier.watchdog_s or 0) / 2)
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.withheld = 0

    def start(self) -> None:
        if not self.notifier.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        since_status = self.status_s  # send one at once
        stalled = False
        while not self.stop_event.wait(self.interval):
            if self.notifier.watchdog_s:
                if self.progressing(self.grace_s):
                    self.notifier.watchdog()
                    self.pings += 1
                    if stalled:
                        log.info("audio and inference progress again; watchdog pings resumed")
                    stalled = False
                else:
                    self.withheld += 1
                    if not stalled:
                        log.warning("no audio or inference progress for %.0f s: watchdog pings withheld", self.grace_s)
                    stalled = True
            since_status += self.interval
            if since_status >= self.status_s:
                self.notifier.status(self.summary())
                since_status = 0.0

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)
