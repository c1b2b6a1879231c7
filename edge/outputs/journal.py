"""Detections reach the store or a journal next to it: a full disk, a locked or read-only store loses none.

``Journal``: a small file beside the store (``<store>.journal``), its space
reserved (written with zeros) when it is opened, while the disk still has
room, so spilling into it needs no new blocks when the disk is full. Records
are JSON lines written in place and fsynced; the zeros after them are free
space. A SIGKILL in the middle of a write leaves at most one torn last line,
skipped with a warning when read.

``StoreGuard``: what the runtime (live and replay) inserts through. When the
store refuses (disk full, locked beyond its busy timeout, read-only, I/O
error) the detections go to the journal at once and are retried with
backoff (``retry_initial_s`` doubling to ``retry_max_s``); the error is
logged once, then at most once per ``log_interval_s`` with a count. Once the
store takes them again the journal is emptied. At start the guard replays
the journal into the store. ``close()`` tries once more and returns how many
detections are still not in the store: the caller says so in one line naming
the store and exits non-zero (``EXIT_UNSTORED``); those in the journal go into
the store at the next start, those that fit nowhere (journal full as well)
are counted in ``lost``.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from edge.types import Detection

log = logging.getLogger(__name__)

EXIT_UNSTORED = 3  # a stop or a replay that leaves detections outside the store (in the journal, or lost)
JOURNAL_BYTES = 256 << 10  # about 500 detections: hours of a full disk; more wait in memory
_CHUNK = 1 << 16


def journal_path(store_path: str | os.PathLike) -> Path:
    return Path(str(store_path) + ".journal")


class Journal:
    """A preallocated file of JSON lines: detections waiting for the store."""

    def __init__(self, path: str | os.PathLike, size: int = JOURNAL_BYTES):
        self.path = Path(path)
        self.size = int(size)
        self._fd: Optional[int] = None
        self._end = 0  # where the next record goes
        self._lock = threading.Lock()
        self.open_error: Optional[str] = None
        try:
            self._open()
        except OSError as exc:  # no room even for the journal: the guard keeps what it can in memory
            self.open_error = f"{self.path}: {exc.strerror or exc}"
            log.error("cannot reserve the detection journal %s", self.open_error)

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            have = os.fstat(fd).st_size
            data = self._read_fd(fd, have)
            used = data.find(b"\0") if b"\0" in data else len(data)
            self._end = data.rfind(b"\n", 0, used) + 1  # a torn last record (a crash mid-write) is dropped...
            if used > self._end:
                log.warning("%s: an interrupted write (%d bytes) dropped", self.path, used - self._end)
                os.pwrite(fd, bytes(used - self._end), self._end)  # ...so the next record starts on a clean line
            if have < self.size:
                zeros = bytes(min(_CHUNK, self.size - have))
                pos = have
                while pos < self.size:
                    n = os.pwrite(fd, zeros[: self.size - pos], pos)
                    pos += n
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _read_fd(fd: int, size: int) -> bytes:
        out, pos = [], 0
        while pos < size:
            b = os.pread(fd, min(_CHUNK, size - pos), pos)
            if not b:
                break
            out.append(b)
            if b"\0" in b:
                break
            pos += len(b)
        return b"".join(out)

    @property
    def usable(self) -> bool:
        return self._fd is not None

    def append(self, detections: Iterable[Detection]) -> int:
        """Write them durably; returns how many fitted (0 when the journal is full or unusable)."""
        if self._fd is None:
            return 0
        n = 0
        with self._lock:
            buf = b""
            for d in detections:
                line = json.dumps(d.to_dict(), separators=(",", ":")).encode() + b"\n"
                if self._end + len(buf) + len(line) > self.size:
                    break
                buf += line
                n += 1
            if buf:
                try:
                    os.pwrite(self._fd, buf, self._end)
                    os.fsync(self._fd)
                except OSError as exc:
                    log.error("cannot write the detection journal %s: %s", self.path, exc)
                    return 0
                self._end += len(buf)
        return n

    def read(self) -> list[Detection]:
        """The detections in the journal (a torn last line is skipped)."""
        if self._fd is None:
            return []
        with self._lock:
            data = self._read_fd(self._fd, self._end)[: self._end]
        out = []
        for i, line in enumerate(data.split(b"\n")):
            if not line.strip():
                continue
            try:
                out.append(Detection(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                log.warning("%s: line %d is not a detection (an interrupted write?), skipped: %s", self.path, i + 1, exc)
        return out

    def clear(self) -> None:
        """Everything in it is in the store now."""
        if self._fd is None or self._end == 0:
            return
        with self._lock:
            os.pwrite(self._fd, bytes(self._end), 0)
            os.fsync(self._fd)
            self._end = 0

    def __len__(self) -> int:
        return len(self.read())

    def close(self, remove_if_empty: bool = True) -> None:
        if self._fd is None:
            return
        with self._lock:
            os.close(self._fd)
            self._fd = None
            if remove_if_empty and self._end == 0:
                try:
                    self.path.unlink()
                except OSError:
                    pass


class StoreGuard:
    """Insert into the store, or keep in the journal and retry; see the module's docstring."""

    def __init__(self, store, journal: Optional[Journal] = None, *, retry_initial_s: float = 0.5,
                 retry_max_s: float = 30.0, log_interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 busy_s: float = 10.0, retry_busy_s: float = 0.5):
        self.store = store
        self.journal = journal if journal is not None else Journal(journal_path(store.path))
        self.retry_initial_s, self.retry_max_s, self.log_interval_s = retry_initial_s, retry_max_s, log_interval_s
        self._clock = clock
        self.busy_s, self.retry_busy_s = busy_s, retry_busy_s  # the store's busy timeout: normally, while failing
        self.pending: list[Detection] = []  # not in the store; in the journal unless also in _memory_only
        self._memory_only: set[str] = set()  # ids that did not fit in the journal
        self._backoff = retry_initial_s
        self._next_try = 0.0
        self._failing_since: Optional[float] = None
        self._failures = 0
        self._last_log = -1e18
        self.lost = 0
        self.last_error = ""
        recovered = self.journal.read()
        if recovered:
            log.warning("%d detection(s) from the journal %s (the store could not take them last time); "
                        "storing them now", len(recovered), self.journal.path)
            self.pending = recovered
            self._next_try = 0.0
            self.retry()

    def open_effort(self, **kw) -> None:
        """The store's ``open_effort``; a store that refuses is logged (effort is not a detection)."""
        try:
            self.store.open_effort(**kw)
        except Exception as exc:  # noqa: BLE001
            log.error("cannot record the listening effort of %s in %s: %s", kw.get("source"), self.store.path, exc)

    @property
    def unstored(self) -> int:
        return len(self.pending)

    def insert(self, detections: Iterable[Detection]) -> list[Detection]:
        """Store them (after any waiting ones, in order); returns those newly stored by this call."""
        dets = list(detections)
        if dets and (self.pending or self._clock() < self._next_try):
            self._keep(dets)  # the store is failing: do not knock on it for every block
            return self.retry() if self._clock() >= self._next_try else []
        if not dets:
            return self.retry() if self.pending and self._clock() >= self._next_try else []
        try:
            return self.store.insert(dets)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, OSError...: never lose them
            self._failed(exc)
            self._keep(dets)
            return []

    def retry(self) -> list[Detection]:
        """Try the waiting detections again (call it now and then, e.g. with every audio block)."""
        if not self.pending or self._clock() < self._next_try:
            return []
        try:
            new = self.store.insert(self.pending)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return []
        n = len(self.pending)
        self.pending, self._memory_only = [], set()
        try:
            self.journal.clear()
        except OSError as exc:  # they are in the store: the next start re-inserts them, which changes nothing
            log.warning("cannot clear the detection journal %s: %s", self.journal.path, exc)
        took = "" if self._failing_since is None else f" after {self._clock() - self._failing_since:.0f} s"
        log.warning("the store %s takes detections again%s: %d waiting detection(s) stored", self.store.path, took, n)
        if self._failing_since is not None:
            self._busy(self.busy_s)
        self._failing_since, self._failures, self._backoff, self._next_try = None, 0, self.retry_initial_s, 0.0
        return new

    def _busy(self, seconds: float) -> None:
        try:
            self.store.set_busy_timeout(seconds)
        except Exception as exc:  # noqa: BLE001 - only a shorter wait
            log.debug("cannot set the busy timeout of %s: %s", self.store.path, exc)

    def _keep(self, dets: list[Detection]) -> None:
        self.pending.extend(dets)
        fitted = self.journal.append(dets)
        for d in dets[fitted:]:
            self._memory_only.add(d.id)
        if fitted < len(dets):
            log.error("the detection journal %s is %s: %d detection(s) held in memory only",
                      self.journal.path, "full" if self.journal.usable else "unusable", len(dets) - fitted)

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._failing_since is None:
            self._failing_since = now
            self._busy(self.retry_busy_s)  # retries wait briefly for a lock: they must not stall the audio
        self._next_try = now + self._backoff
        if now - self._last_log >= self.log_interval_s:
            self._last_log = now
            log.error("cannot store detections in %s (%s); %d waiting in the journal %s, retrying every %.0f s or "
                      "less (%d failed attempt(s) so far; this is logged at most every %.0f s)", self.store.path,
                      self.last_error, len(self.pending), self.journal.path, min(self._backoff * 2, self.retry_max_s),
                      self._failures, self.log_interval_s)
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    def close(self, attempts: int = 3, wait_s: float = 0.5) -> int:
        """One last try (a few, briefly); returns how many detections are still not in the store."""
        for i in range(attempts):
            if not self.pending:
                break
            self._next_try = 0.0
            self.retry()
            if self.pending and i + 1 < attempts:
                time.sleep(wait_s)
        self.lost = len(self._memory_only)
        if self.pending:
            kept = len(self.pending) - self.lost
            log.error("%d detection(s) could not be stored in %s (%s): %d kept in the journal %s (stored at the next "
                      "start), %d lost", len(self.pending), self.store.path, self.last_error, kept,
                      self.journal.path, self.lost)
        self.journal.close(remove_if_empty=False)  # its space stays reserved for the next run
        return len(self.pending)

    def summary(self) -> str:
        """One line for the user when detections are not in the store (empty when all are)."""
        if not self.pending:
            return ""
        kept = len(self.pending) - self.lost
        return (f"error: {len(self.pending)} detection(s) not stored in {self.store.path} ({self.last_error}); "
                f"{kept} kept in {self.journal.path} for the next start" + (f", {self.lost} lost" if self.lost else ""))
