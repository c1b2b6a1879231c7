"""Time that clock steps cannot move: a monotonic clock for intervals, the wall clock read once.

A Raspberry Pi has no real-time clock: it boots with the time it had when it
shut down (or 1970) and NTP steps it, forward or back, some time later. So:

- ``StreamClock``: live timestamps are anchored to the wall clock ONCE (per
  process) and then advance with the monotonic clock. ``check()`` compares
  the wall clock with that timeline and reports a step (forward or back)
  once per step; the daemon logs it and records it as a gap row whose
  reason starts with ``clock step`` (no audio is lost; the row is the record
  that timestamps and the wall clock now differ by that much).
  ``not_before(t)`` moves the anchor forward past what the store already
  holds (a restart after a step back), so a start time, and so a detection
  id, never repeats.
- ``OutboxClock``: the MQTT re-send window's timeline: seconds since boot
  (CLOCK_BOOTTIME: one clock for every process of a boot, so a daemon
  restart measures its downtime exactly), continued after a reboot from the
  last acknowledgement stored (the time a device is off counts as zero). An
  acknowledgement is never pushed out of the window by a restart or a clock
  step: at worst something is sent once more.
- ``boot_id()`` / ``boot_time()``: the kernel's boot id and CLOCK_BOOTTIME,
  for intervals between processes of one boot (the crash-loop counter).

``wall()`` is ``time.time()`` plus a fault-injection offset: when the
environment names ``DAWNCHORUS_CLOCK_OFFSET_FILE``, the number of seconds in
that file (re-read when it changes) is added, so ``bench/faults`` can step the
clock of a real daemon process without root and without touching the
monotonic clock (as NTP does). Nothing else reads that variable.

Imports from edge: contract.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from edge.contract.record import format_utc

log = logging.getLogger(__name__)

OFFSET_ENV = "DAWNCHORUS_CLOCK_OFFSET_FILE"
STEP_THRESHOLD_S = 2.0  # wall clock vs the stream's timeline: more than this is a step, not drift

_offset: dict[str, Any] = {"path": None, "stamp": None, "value": 0.0}
_offset_lock = threading.Lock()


def _injected_offset() -> float:
    path = os.environ.get(OFFSET_ENV)
    if not path:
        return 0.0
    with _offset_lock:
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return 0.0
        if (path, stamp) != (_offset["path"], _offset["stamp"]):
            try:
                value = float(open(path).read().strip() or 0)
            except (OSError, ValueError):
                value = _offset["value"]
            _offset.update(path=path, stamp=stamp, value=value)
        return _offset["value"]


def wall() -> float:
    """The wall clock (seconds since the epoch), as NTP sets it."""
    return time.time() + _injected_offset()


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def boot_time() -> float:
    """Seconds since boot (suspend included), the same for every process of one boot."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


class StreamClock:
    """Wall time anchored once, advanced by the monotonic clock; reports steps of the wall clock."""

    def __init__(self, wall_fn: Callable[[], float] = wall, mono_fn: Callable[[], float] = time.monotonic,
                 threshold_s: float = STEP_THRESHOLD_S):
        self._wall, self._mono = wall_fn, mono_fn
        self.threshold_s = threshold_s
        self._lock = threading.Lock()
        m, w = mono_fn(), wall_fn()
        self._anchor = (w, m)  # (wall time, monotonic time) the timeline counts from
        self._offset = 0.0  # wall - timeline at the last step reported
        #: the steps seen: (timeline time, seconds; positive is forward)
        self.steps: list[tuple[float, float]] = []

    def now(self) -> float:
        """Seconds since the epoch on the stream's timeline (never steps, never goes back)."""
        w0, m0 = self._anchor
        return w0 + (self._mono() - m0)

    def not_before(self, t: float) -> Optional[float]:
        """Move the timeline forward to ``t`` if it is behind it (times in the store); returns the shift."""
        with self._lock:
            behind = t - self.now()
            if behind <= 0:
                return None
            w0, m0 = self._anchor
            self._anchor = (w0 + behind, m0)
            self._offset -= behind
        log.warning("the wall clock is %.3f s behind the newest time in the store: this run's timestamps continue "
                    "from there (no time, and so no detection id, repeats)", behind)
        return behind

    def check(self) -> Optional[float]:
        """The size of a new wall-clock step (seconds, + forward / - back), once per step; else None."""
        w, t = self._wall(), self.now()
        with self._lock:
            diff = w - t
            step = diff - self._offset
            if abs(step) <= self.threshold_s:
                return None
            self._offset = diff
            self.steps.append((t, step))
        return step


_stream_clock: Optional[StreamClock] = None
_stream_clock_lock = threading.Lock()


def stream_clock() -> StreamClock:
    """The process's one stream clock (anchored on first use): every live source and the daemon share it."""
    global _stream_clock
    with _stream_clock_lock:
        if _stream_clock is None:
            _stream_clock = StreamClock()
        return _stream_clock


def anchor_after_store(clock: StreamClock, store, device_id: str, source: str) -> Optional[float]:
    """After a restart with the wall clock behind what this device already stored, continue after it."""
    try:
        with store._lock:
            rows = store.db.execute(
                "SELECT max(end_utc) FROM detections WHERE device_id = ? AND time_source = 'clock' UNION ALL "
                "SELECT max(end_utc) FROM effort WHERE device_id = ? AND source = ?", [device_id, device_id, source]
            ).fetchall()
    except Exception as exc:  # noqa: BLE001 - only a guard
        log.debug("cannot read the store's newest time: %s", exc)
        return None
    times = [datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp() for r in rows if r[0]]
    return clock.not_before(max(times) + 0.001) if times else None


def record_step(step: float, at: float, store, device_id: str, source: str) -> None:
    """Log a wall-clock step and record it in the store as a zero-sample gap (``reason`` starts 'clock step')."""
    direction = "forward" if step > 0 else "back"
    log.warning("the wall clock stepped %s by %.3f s at %s; timestamps stay on the stream's timeline "
                "(recorded as a clock-step gap)", direction, abs(step), format_utc(utc(at)))
    t = format_utc(utc(at))
    try:
        store.add_gap(device_id=device_id, source=source, start_utc=t, end_utc=t,
                      reason=f"clock step {direction} {step:+.3f} s (wall clock now {format_utc(utc(at + step))})",
                      samples_lost=0)
    except Exception as exc:  # a full disk must not stop the capture
        log.error("cannot record the clock step: %s", exc)


class OutboxClock:
    """Seconds for the re-send window: seconds since boot (so exact across restarts of the daemon within one
    boot), continued after a reboot from the last acknowledgement stored (``continue_from``)."""

    def __init__(self, start: float = 0.0, mono_fn: Callable[[], float] = boot_time):
        self._mono = mono_fn
        self._m0 = mono_fn()
        self._base = float(start)

    def continue_from(self, t: Optional[float]) -> None:
        """Never behind ``t`` (the last acknowledgement the store holds)."""
        if t is not None and t > self.now():
            self._base += t - self.now()

    def now(self) -> float:
        return self._base + (self._mono() - self._m0)
