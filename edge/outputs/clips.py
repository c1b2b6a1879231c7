"""Optional WAV clips of detection events, within a disk budget.

``ClipWriter`` keeps the last few tens of seconds of pipeline audio (int16,
preallocated) indexed by stream offset. Each detection event handed to it
(``handle``) becomes one 16-bit mono WAV covering the event plus
``padding_s`` either side, written once the audio after the event has
arrived (``add_audio``), or at ``flush()`` with what there is. A segment
model's detections come up to its ``delay_s`` later than a window model's
(``edge.detection.segments``): the history grows by that much (``delay_s``,
asked before each block, so a swapped-in model counts too).

Files are ``<dir>/<YYYY-MM-DD>/<YYYYmmddTHHMMSSZ>_<label>_<id8>.wav``. After
each write, the oldest clips go first until the total is within
``max_disk_mb``. Only ``.wav`` files under the clips directory are ever
deleted (and ``.wav.part`` leftovers of interrupted writes): the database
never is.

Clips yield to the store: before each clip, the file system it goes to must
keep ``min_free_mb`` free after it (``store.reserve_mb``: on a device the
clips and the store share one card). Else the oldest clips go first, and if
that is not enough the clip is skipped (logged once per minute with a
count). A failed write leaves no ``.part`` file.
"""
from __future__ import annotations

import logging
import os
import time
import wave
from collections import deque
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from edge.contract.record import Detection
from edge.outputs.clip_paths import clip_path
from edge.types import AudioBlock, DetectionSink
from edge.files import atomic_file

log = logging.getLogger(__name__)


class ClipWriter(DetectionSink):
    def __init__(self, directory: str | Path, sample_rate: int, *, padding_s: float = 1.0,
                 max_disk_mb: float = 1024, history_s: float = 60.0, min_free_mb: float = 0.0,
                 delay_s: Optional[Callable[[], float]] = None):
        self.dir = Path(directory)
        self.history_s = float(history_s)
        self.delay_s = delay_s  # () -> how much later than a window model detections may come (the pipeline's)
        self.rate = int(sample_rate)
        self.padding_s = float(padding_s)
        self.budget = int(max_disk_mb * 1e6)
        self.floor = int(min_free_mb * 1e6)
        self.skipped = 0
        self.failed = 0
        self._fail_logged = -1e18
        self._skip_logged = -1e18
        self.capacity = int((history_s + 2 * padding_s) * self.rate)
        self._hist = np.zeros(self.capacity, dtype=np.int16)
        self._end = 0  # stream sample index one past the newest sample held
        self._pending: list[Detection] = []
        self.written = 0
        self.deleted = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: deque[tuple[float, str, int]] = deque()  # (mtime, path, size), oldest first
        self._total = 0
        self._scan()

    @classmethod
    def from_config(cls, cfg, sample_rate: int,
                    delay_s: Optional[Callable[[], float]] = None) -> Optional["ClipWriter"]:
        """The clip writer a configuration asks for: ``clips.enabled``, or the dashboard on
        (``web.enabled``: it plays and draws the clips); None when neither. ``delay_s``: the pipeline's."""
        if not (cfg.clips.enabled or cfg.web.enabled):
            return None
        c = cfg.clips
        return cls(c.dir, sample_rate, padding_s=c.padding_s, max_disk_mb=c.max_disk_mb,
                   min_free_mb=cfg.store.reserve_mb, delay_s=delay_s)

    def end_source(self) -> None:
        """The source ended: write the clips still waiting; the next source counts its samples from 0."""
        self.flush()
        self._end = 0

    def _scan(self) -> None:
        found = []
        for root, _dirs, names in os.walk(self.dir):
            for n in names:
                if n.endswith(".wav.part"):  # a write interrupted by a crash
                    try:
                        os.unlink(os.path.join(root, n))
                    except OSError:
                        pass
                elif n.endswith(".wav"):
                    p = os.path.join(root, n)
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    found.append((st.st_mtime, p, st.st_size))
        found.sort()
        self._files = deque(found)
        self._total = sum(f[2] for f in found)
        self._enforce_budget()

    # -- audio -------------------------------------------------------------------
    def _fit(self, delay_s: float) -> None:
        """Room for ``delay_s`` more history (kept in place: sample i stays at i % capacity's new value)."""
        need = int((self.history_s + delay_s + 2 * self.padding_s) * self.rate)
        if need <= self.capacity:
            return
        held = self._slice(self._end - self.capacity, self._end)
        self.capacity = need
        self._hist = np.zeros(need, dtype=np.int16)
        idx = np.arange(self._end - len(held), self._end) % need
        self._hist[idx] = held

    def add_audio(self, block: AudioBlock) -> None:
        if self.delay_s is not None:
            self._fit(self.delay_s())
        x = np.asarray(block.samples)
        start = int(round(block.offset_s * self.rate))
        if len(x) >= self.capacity:
            x, start = x[-self.capacity:], start + len(x) - self.capacity
        q = np.clip(x * 32767.0, -32768, 32767).astype(np.int16)
        i = start % self.capacity
        first = min(len(q), self.capacity - i)
        self._hist[i:i + first] = q[:first]
        self._hist[:len(q) - first] = q[first:]
        self._end = start + len(q)
        if self._pending:
            self._write_ready(final=False)

    def _slice(self, a: int, b: int) -> np.ndarray:
        a = max(a, self._end - self.capacity, 0)
        b = min(b, self._end)
        if b <= a:
            return np.zeros(0, np.int16)
        idx = np.arange(a, b) % self.capacity
        return self._hist[idx]

    # -- events ------------------------------------------------------------------
    def handle(self, detections: Sequence[Detection]) -> None:
        self._pending.extend(detections)
        self._write_ready(final=False)

    def flush(self) -> None:
        self._write_ready(final=True)

    def _write_ready(self, final: bool) -> None:
        keep = []
        for d in self._pending:
            a = int((d.offset_s - self.padding_s) * self.rate)
            b = int((d.end_offset_s + self.padding_s) * self.rate)
            if b > self._end and not final:
                keep.append(d)
                continue
            try:
                self._write(d, self._slice(a, b))
            except OSError as exc:
                self.failed += 1
                now = time.monotonic()
                if now - self._fail_logged >= 60:
                    self._fail_logged = now
                    log.error("cannot write the clip of detection %s: %s (%d clip(s) failed so far; logged at most "
                              "once a minute)", d.id, exc, self.failed)
        self._pending = keep

    def _write(self, d: Detection, samples: np.ndarray) -> None:
        if not len(samples):
            log.warning("no audio left for the clip of detection %s", d.id)
            return
        if not self._make_room(44 + 2 * len(samples), d):  # before the mkdir: it may empty (and remove) a day's dir
            return
        path = clip_path(self.dir, d.start_utc, d.label, d.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, tmp=path.with_suffix(".wav.part")) as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(samples.astype("<i2").tobytes())
        size = path.stat().st_size
        self._files.append((path.stat().st_mtime, str(path), size))
        self._total += size
        self.written += 1
        log.debug("clip %s (%.1f s)", path, len(samples) / self.rate)
        self._enforce_budget()

    def _free(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def _make_room(self, size: int, d: Detection) -> bool:
        """Keep ``min_free_mb`` free after this clip: delete the oldest clips, else skip this one."""
        if self.floor <= 0:
            return True
        while self._free() - size < self.floor and self._files:
            self._delete_oldest()
        free = self._free()
        if free - size >= self.floor:
            return True
        self.skipped += 1
        now = time.monotonic()
        if now - self._skip_logged >= 60:
            self._skip_logged = now
            log.warning("clip of detection %s skipped: %.1f MB free on %s, and clips keep %.1f MB for the store "
                        "(%d clip(s) skipped so far; logged at most once a minute)", d.id, free / 1e6, self.dir,
                        self.floor / 1e6, self.skipped)
        return False

    def _delete_oldest(self) -> bool:
        _mtime, p, size = self._files.popleft()
        try:
            os.unlink(p)
            self.deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot delete old clip %s: %s", p, exc)
            self._files.appendleft((_mtime, p, size))
            return False
        self._total -= size
        parent = os.path.dirname(p)
        if parent != str(self.dir):
            try:
                os.rmdir(parent)  # only when empty
            except OSError:
                pass
        return True

    def _enforce_budget(self) -> None:
        while self._total > self.budget and self._files:
            if not self._delete_oldest():
                break

    @property
    def disk_bytes(self) -> int:
        return self._total

    def close(self) -> None:
        self.flush()
