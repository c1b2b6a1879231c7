"""A preallocated single-producer, single-consumer ring buffer of audio frames.

The capture callback calls ``write``: it only copies into the preallocated
array, or, when the reader has fallen a whole buffer behind, drops the block
and remembers where (a gap marker). It never blocks, never allocates on the
normal path and never overwrites unread audio. The processing thread calls
``read``, which never returns audio spanning a gap: a read stops at a gap
marker, and the next read reports the frames lost before it. Frames lost at
the very end (the stream stopped while the ring was full, so no audio follows
them) are collected with ``take_trailing_loss`` once everything is read.

Positions are counted in frames written since creation (Python ints; a
plain attribute store is atomic under the GIL, and each counter has one
writer), so the two threads need no lock.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    """Frames read from the ring: ``data`` (n, channels), the position of its
    first frame, the wall-clock time of that frame, and the frames lost just
    before it (None: none; 0: an unknown number, e.g. a driver overflow)."""

    data: np.ndarray
    position: int
    start_time: float
    lost_before: int | None


class RingBuffer:
    def __init__(self, capacity: int, channels: int = 1, rate: int = 32000, dtype=np.float32, clock=time.time):
        if capacity <= 0 or channels <= 0:
            raise ValueError("capacity and channels must be positive")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self.rate = int(rate)
        self._buf = np.zeros((self.capacity, self.channels), dtype=dtype)
        self._w = 0  # frames written (writer only)
        self._r = 0  # frames read (reader only)
        self._gaps: deque[tuple[int, int]] = deque()  # (position, frames lost before it)
        self._ready = threading.Event()
        self.overflows = 0  # blocks dropped because the reader was behind
        self.driver_overflows = 0  # input overflows PortAudio reported
        self.dropped_frames = 0
        self._stamp = (0.0, 0)  # (wall clock, position) at the end of the last write, set as one
        self._clock = clock  # the wall clock: the daemon's is edge.clock.StreamClock.now (steps do not show)

    # -- producer (the capture callback) ---------------------------------------
    def write(self, frames: np.ndarray, driver_overflow: bool = False) -> bool:
        """Copy ``frames`` (n, channels) in; False if dropped for lack of room."""
        n = len(frames)
        w = self._w
        if driver_overflow:
            self.driver_overflows += 1
            self._gaps.append((w, 0))
        if n > self.capacity - (w - self._r):
            self.overflows += 1
            self.dropped_frames += n
            self._gaps.append((w, n))
            self._ready.set()
            return False
        i = w % self.capacity
        first = min(n, self.capacity - i)
        self._buf[i:i + first] = frames[:first]
        if first < n:
            self._buf[:n - first] = frames[first:]
        self._stamp = (self._clock(), w + n)
        self._w = w + n
        self._ready.set()
        return True

    # -- consumer (the processing thread) --------------------------------------
    @property
    def available(self) -> int:
        return self._w - self._r

    def wait(self, timeout: float) -> bool:
        """Wait until something was written (or dropped) since the last read."""
        ok = self._ready.wait(timeout)
        self._ready.clear()
        return ok or self.available > 0

    def read(self, max_frames: int) -> Chunk | None:
        """Up to ``max_frames`` contiguous frames (a copy), or None if empty."""
        r = self._r
        w = self._w
        lost = None
        while self._gaps and self._gaps[0][0] <= r:
            lost = (lost or 0) + self._gaps.popleft()[1]
        avail = w - r
        if avail <= 0:
            if lost is not None:  # a gap with nothing after it yet: keep it for the next read
                self._gaps.appendleft((r, lost))
            return None
        n = min(avail, int(max_frames))
        if self._gaps and self._gaps[0][0] < r + n:
            n = self._gaps[0][0] - r
        i = r % self.capacity
        first = min(n, self.capacity - i)
        out = np.empty((n, self.channels), dtype=self._buf.dtype)
        out[:first] = self._buf[i:i + first]
        if first < n:
            out[first:] = self._buf[:n - first]
        # wall clock of frame r, from the last write's time (no drift over months)
        stamp_time, stamp_pos = self._stamp
        t = stamp_time - (stamp_pos - r) / self.rate
        self._r = r + n
        return Chunk(out, r, t, lost)

    def take_trailing_loss(self) -> tuple[float, int] | None:
        """Once all audio is read: the loss after the last frame, which no read can report.

        Returns (wall-clock time of the first lost frame, frames lost; 0 for
        a driver overflow alone) and forgets it; None if nothing was lost
        there or audio is still unread.
        """
        r = self._r
        if self._w != r or not self._gaps:
            return None
        lost = 0
        while self._gaps:
            lost += self._gaps.popleft()[1]
        stamp_time, stamp_pos = self._stamp
        if stamp_pos == 0:  # nothing was ever written: the loss ends now
            return self._clock() - lost / self.rate, lost
        return stamp_time - (stamp_pos - r) / self.rate, lost
