"""The workers of a parallel replay (``edge.service.parallel``): a unit of work in, window scores out.

``Work`` is what every worker needs (the replay job; the bundle's bytes for
workers on other machines), ``Unit`` one whole file or a piece of one,
``UnitResult`` its windows' offsets, times and scores. ``analyse`` runs in
the worker, through the runtime's own per-source loop (a runtime without a
store or services; post-processing is left to the parent). The executors
hand units to worker processes (``ProcessExecutor``), to this process
(``InlineExecutor``) or to a Dask cluster (``edge.service.cluster``).
"""
from __future__ import annotations

import logging
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Optional

import numpy as np

from edge.sources.file import FileSource, SourceError

log = logging.getLogger(__name__)



def open_source(path: str, sample_rate: int, job, span: Optional[tuple[int, Optional[int]]] = None) -> FileSource:
    """The file as ``edge.service.replay.replay_file`` opens it (not paced), or a span of it; in 2 s blocks
    (the same results as 4 s: frames do not depend on block boundaries; a worker peaks 4 MB lower)."""
    return FileSource(path, sample_rate, channel=job.channel, start_utc=job.start_utc,
                      timezone=job.cfg.location.timezone, block_s=2.0, span=span)


@dataclass(frozen=True)
class Work:
    """What a worker needs: the replay's job and, for workers on other machines, the bundle and key bytes."""

    job: Any  # edge.service.replay.ReplayJob
    bundle_data: Optional[bytes] = field(default=None, repr=False)
    public_key_data: Optional[bytes] = field(default=None, repr=False)

    def with_data(self) -> "Work":
        from dataclasses import replace
        from pathlib import Path

        m = self.job.cfg.model
        return replace(self, bundle_data=Path(m.bundle_path).read_bytes(),
                       public_key_data=Path(m.public_key_path).read_bytes())


@dataclass(frozen=True)
class Unit:
    """A whole file (``span`` None) or output samples ``span`` of it, windows from ``first_window``."""

    file: int  # index in the replay's list of files
    path: str  # absolute: workers elsewhere do not share our working directory
    span: Optional[tuple[int, Optional[int]]] = None
    first_window: int = 0
    last: bool = True  # the file's last unit: it also scores the tail window
    start_utc: Optional[datetime] = None  # the file's start when it came from the parent's clock
    own_end: Optional[int] = None  # where the next piece's samples begin (pieces overlap by a window)


@dataclass
class UnitResult:
    unit: Unit
    offsets: list[float] = field(default_factory=list)
    utcs: list[datetime] = field(default_factory=list)
    scores: Optional[np.ndarray] = None  # (windows, labels) float32
    audio_end_s: float = 0.0  # offset of the end of the audio analysed
    end_utc: Optional[datetime] = None  # and its time
    error: Optional[str] = None  # the SourceError that cut the unit short
    no_signal_windows: int = 0  # the signal guard's counts (edge.detection.guard), for the summary
    nonfinite_samples: int = 0  # in this unit's own samples (not those the next piece also reads)
    decode_s: float = 0.0
    frontend_s: float = 0.0
    invoke_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    worker: str = ""
    peak_rss_mb: float = 0.0

    @property
    def windows(self) -> int:
        return len(self.offsets)


# -- the work (worker) -------------------------------------------------------------------

_LOCAL = threading.local()  # one runtime per worker thread (a Dask worker may run several)


def _runtime(work: Work):
    """The worker's runtime (model and pipeline, no store, no services), built once per process (thread)."""
    key = (repr(work.job), hash(work.bundle_data))
    cached = getattr(_LOCAL, "runtime", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    from dataclasses import replace

    from edge.service.replay import open_replay

    job = replace(work.job, use_store=False, realtime=False)
    if work.bundle_data is not None and work.public_key_data is not None:  # sent along: kept in a private directory of this worker
        import hashlib
        import tempfile
        from pathlib import Path

        d = Path(tempfile.gettempdir()) / f"dawnchorus-{os.getuid()}" / hashlib.sha256(work.bundle_data).hexdigest()[:16]
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        (d / "model.bundle").write_bytes(work.bundle_data)
        (d / "model.pub").write_bytes(work.public_key_data)
        model = job.cfg.model.model_copy(update={"bundle": d / "model.bundle", "public_key": d / "model.pub"})
        job = replace(job, cfg=job.cfg.model_copy(update={"model": model}))
    rt = open_replay(job, services=False)
    rt.pipeline.windows_only = True  # events are made by the parent, from every piece's windows
    _LOCAL.runtime = (key, rt)
    return rt


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analyse(unit: Unit, work: Work) -> UnitResult:
    """Decode, front-end and model for one unit: the scores of its windows (runs in a worker).

    A piece that is not the file's last ends with its last window's samples, so the end of the
    source adds no tail window; only the last piece (or a piece whose decoding broke off) has one.
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    rt = _runtime(work)
    p = rt.pipeline
    res = UnitResult(unit, worker=f"{os.uname().nodename}:{os.getpid()}")
    rows: list[np.ndarray] = []

    def on_window(offset_s, start_utc, scores):
        res.offsets.append(offset_s)
        res.utcs.append(start_utc)
        rows.append(np.asarray(scores, dtype=np.float32))

    s0, g0 = dict(p.stats), p.guard.no_signal_windows
    try:
        source = open_source(unit.path, p.sample_rate, work.job, unit.span)
    except SourceError as exc:
        res.error = str(exc)
    else:
        if unit.start_utc is not None and source.time_source == "replay-time":
            source.start_utc = unit.start_utc
        sr = p.sample_rate

        def on_block(block):
            res.end_utc = block.start_utc + timedelta(seconds=len(block.samples) / sr)  # as run_source has it
            first = round(block.offset_s * sr)
            own = block.samples if unit.own_end is None else block.samples[: max(0, unit.own_end - first)]
            if len(own):
                res.nonfinite_samples += len(own) - int(np.count_nonzero(np.isfinite(own)))

        p.on_window = on_window
        try:
            run = rt.run_source(source, on_block=on_block)
        finally:
            p.on_window = None
        res.audio_end_s, res.error, res.decode_s = run.audio_s, run.error, run.decode_s
    res.scores = np.stack(rows) if rows else np.zeros((0, len(p.bundle.labels)), np.float32)
    res.no_signal_windows = p.guard.no_signal_windows - g0
    res.frontend_s = p.stats["frontend_s"] - s0["frontend_s"]
    res.invoke_s = p.stats["invoke_s"] - s0["invoke_s"]
    res.wall_s = time.perf_counter() - t_start
    res.cpu_s = time.process_time() - c_start
    res.peak_rss_mb = peak_rss_mb()
    return res


# -- executors (parent) ------------------------------------------------------------------

def worker_environment() -> None:
    """What every worker inherits: one BLAS thread, and freed memory kept in the heap (see edge/__main__.py)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(16 * 1024 * 1024))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 * 1024 * 1024))


#: what every worker imports (a missing one is skipped)
PRELOAD = [
    "edge.service.workers", "edge.service.parallel", "edge.service.replay",
    "edge.detection.pipeline", "edge.contract.interpreter", "edge.contract.signing", "ai_edge_litert.interpreter", "soxr",
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed replay that nobody has reaped yet
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _watch_replay(pid: int) -> None:
    """Exit when the replay that started this worker is gone (killed: its pool cannot tell us)."""
    while True:
        time.sleep(1.0)
        if not _alive(pid):
            os._exit(0)


def _worker_start(work: Optional[Work], replay_pid: int) -> None:
    """A worker's first acts. Its own session: the terminal's Ctrl-C reaches the replay, which stops the
    workers in order (and where the kernel shares CPU time between sessions, a replay's workers count as
    the separate jobs they are); a watch on the replay, so a killed replay leaves no worker behind. Then
    the model (a failure shows again, with its reason, on the first unit)."""
    try:
        os.setsid()
    except OSError:
        pass
    threading.Thread(target=_watch_replay, args=(replay_pid,), name="replay-watch", daemon=True).start()
    if work is not None:
        _warm(work)


def _warm(work: Work) -> None:
    """Load the model for ``work`` in this worker (thread) now; a failure shows again on the first unit."""
    try:
        _runtime(work)
    except Exception:  # noqa: BLE001
        pass


def _nothing() -> None:
    pass


class ProcessExecutor:
    """``jobs`` worker processes on this machine (forkserver where there is one, else spawn), started now:
    each loads the model for ``work`` at once, while the caller gets on with its own set-up."""

    def __init__(self, jobs: int, work: Optional[Work] = None):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        worker_environment()
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver":  # imported once in the server, not in every worker: 1 s sooner at work
            ctx.set_forkserver_preload(PRELOAD)
        self.jobs = jobs
        self.description = f"{jobs} worker processes ({method})"
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_start,
                                         initargs=(work, os.getpid()))
        for _ in range(jobs):  # workers start on demand: ask for all of them now
            self._pool.submit(_nothing)

    def submit(self, unit: Unit, work: Work):
        return self._pool.submit(analyse, unit, work)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


class InlineExecutor:
    """The units in this process, one after the other (tests)."""

    jobs = 1
    description = "in this process"

    def submit(self, unit: Unit, work: Work):
        from concurrent.futures import Future

        f: Future = Future()
        f.set_result(analyse(unit, work))
        return f

    def close(self, cancel: bool = False) -> None:
        pass


def results_in_order(executor, units: Iterable[Unit], work: Work):
    """Submit every unit, then yield the results in the units' order (the workers run ahead)."""
    futures = [executor.submit(u, work) for u in units]
    for f in futures:
        yield f.result()


