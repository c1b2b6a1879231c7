"""The workers of a parallel replay (``edge.service.parallel``): a unit of work in, window scores out.

``Work`` is what every worker needs (``WorkerJob``: the replay job's plain
values; the bundle's bytes for workers on other machines), ``Unit`` one
whole file or a piece of one, ``UnitResult`` its windows' offsets, times and
scores. ``analyse`` runs in the worker: the unit's blocks through a pipeline
that scores windows, fed as ``Runtime.run_source`` feeds it; the store,
post-processing, sessions and sinks stay in the parent. A worker imports
only the decoder, the resampler, the front-end, the pipeline and LiteRT
(not the configuration's pydantic classes nor the store): with Dask's own
50 MB a cluster worker stays within 100 MB. The executors
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

from edge import heap
from edge.procstat import status_mb
from edge.sources.file import REPLAY_BLOCK_S, FileSource, SourceError

log = logging.getLogger(__name__)



def open_source(path: str, sample_rate: int, spec: "WorkerJob", span: Optional[tuple[int, Optional[int]]] = None
                ) -> FileSource:
    """The file as ``edge.service.replay.replay_file`` opens it (not paced), or a span of it, in blocks of
    ``spec.block_s`` (the results do not depend on it: frames do not depend on block boundaries)."""
    return FileSource(path, sample_rate, channel=spec.channel, start_utc=spec.start_utc, timezone=spec.timezone,
                      block_s=spec.block_s, span=span)


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs of the replay's job, as plain values: a worker then imports neither the
    configuration's classes (pydantic: 16 MB of a worker's memory) nor the store, only the model's path."""

    bundle_path: str
    public_key_path: str
    max_bundle_bytes: int
    num_threads: int = 1
    overlap_s: Optional[float] = None
    channel: Optional[int] = None
    start_utc: Optional[datetime] = None
    timezone: Optional[str] = None
    #: seconds of audio decoded at a time (edge.sources.file.REPLAY_BLOCK_S); a Dask worker, which carries
    #: Dask's own 62 to 66 MB, is given 2 s (edge.service.cluster): 5 MB lower at its peak
    block_s: float = REPLAY_BLOCK_S

    @classmethod
    def of(cls, job) -> "WorkerJob":
        """From an ``edge.service.replay.ReplayJob``."""
        m = job.cfg.model
        return cls(str(m.bundle_path), str(m.public_key_path), int(m.max_bundle_mb * 1024 * 1024), m.num_threads,
                   m.overlap_s, job.channel, job.start_utc, job.cfg.location.timezone)


@dataclass(frozen=True)
class Work:
    """What a worker needs: the replay's job (``spec``: its plain values; the job itself stays in this process,
    it is not sent) and the model bundle, verified here (``with_bundle``), so workers on this machine or
    others need neither the bundle's file nor its key, and never load ``cryptography``."""

    job: Any = field(compare=False)  # edge.service.replay.ReplayJob (None in a worker)
    bundle: Any = field(default=None, repr=False, compare=False)  # edge.contract.bundle.Bundle, verified
    spec: WorkerJob = field(init=False)  # from ``job``

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", WorkerJob.of(self.job))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "job": None}  # workers get ``spec``: no configuration classes to import

    def with_bundle(self) -> "Work":
        """This work with the job's bundle, loaded and verified (signature, hashes) in this process."""
        if self.bundle is not None:
            return self
        from edge.contract.bundle import load_bundle
        from edge.contract.signing import load_public_key

        s = self.spec
        return self.replaced(bundle=load_bundle(s.bundle_path, load_public_key(s.public_key_path),
                                             max_bytes=s.max_bundle_bytes))

    def to_send(self) -> "Work":
        """With the bundle when it verifies; else without (the replay refuses it with its reason as it loads
        its own, and a worker would refuse it the same way)."""
        try:
            return self.with_bundle()
        except Exception:  # noqa: BLE001 - reported by the replay's own load
            return self

    @property
    def light(self) -> "Work":
        """Without the bundle (what every unit is sent with once the worker has the model)."""
        return self if self.bundle is None else self.replaced(bundle=None)

    def replaced(self, **changes: Any) -> "Work":
        """A copy with ``changes`` (``bundle``, ``spec``; not through ``__init__``: in a worker there is no job to
        take ``spec`` from)."""
        new = object.__new__(Work)
        new.__dict__.update(self.__dict__, **changes)
        return new


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
    start_cpu_s: float = 0.0  # the worker process's CPU time before its first unit (start, model), on that unit only
    worker: str = ""
    peak_rss_mb: float = 0.0

    @property
    def windows(self) -> int:
        return len(self.offsets)


# -- the work (worker) -------------------------------------------------------------------

_LOCAL = threading.local()  # one pipeline per worker thread (a Dask worker may run several)
_BUNDLES: dict = {}  # WorkerJob -> the verified bundle this process's pipelines were built from


def held_bundle(spec: WorkerJob) -> Optional[str]:
    """The sha256 of the model this worker process holds for ``spec`` (None: none yet). A cluster's client asks
    its workers before a replay, and sends the bundle only if one of them lacks it (a worker that received it
    again for every replay would hold two copies for a while: 3 to 6 MB more at its peak)."""
    bundle = _BUNDLES.get(spec)
    return None if bundle is None else bundle.sha256


def _pipeline(work: Work):
    """The worker's pipeline and model (no store, no services: it scores windows), built once per process
    (thread) and job, from the bundle sent along (verified by the replay), else the one this process already
    holds for the job, else the job's bundle file (verified here). The model's self-test runs here, on this
    machine's interpreter."""
    cached = getattr(_LOCAL, "pipeline", None)
    if cached is not None and cached[0] == work.spec and (
            work.bundle is None or cached[1].bundle.sha256 == work.bundle.sha256):
        return cached[1]
    heap.configure()  # as python -m edge keeps it (edge/heap.py): a Dask worker does not start through it
    from edge.contract.interpreter import load_model
    from edge.detection.pipeline import Pipeline

    spec = work.spec
    bundle = work.bundle or _BUNDLES.get(spec) or work.with_bundle().bundle
    _LOCAL.pipeline = None  # the old model goes before the new one loads
    p = Pipeline(bundle, load_model(bundle, num_threads=spec.num_threads), overlap_s=spec.overlap_s)
    p.windows_only = True  # events are made by the parent, from every piece's windows
    _LOCAL.pipeline = (spec, p)
    _BUNDLES.clear()  # the latest job's only: a long-lived worker serving many replays does not pile up bundles
    _BUNDLES[spec] = bundle
    return p


_START_CPU = [0.0]  # a local worker's CPU time to start (imports, model), reported with its first unit


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (Linux), the high-water mark of its own address space.
    Not ``ru_maxrss`` where there is VmHWM: that survives exec, so a worker started straight from a large
    process (``dask worker --no-nanny`` from a 230 MB bench) reported the parent's size, not its own."""
    hwm = status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analyse(unit: Unit, work: Work) -> UnitResult:
    """Decode, front-end and model for one unit: the scores of its windows (runs in a worker).

    A piece that is not the file's last ends with its last window's samples, so the end of the
    source adds no tail window; only the last piece (or a piece whose decoding broke off) has one.
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    p = _pipeline(work)
    res = UnitResult(unit, worker=f"{os.uname().nodename}:{os.getpid()}")
    rows: list[np.ndarray] = []

    def on_window(offset_s, start_utc, scores):
        res.offsets.append(offset_s)
        res.utcs.append(start_utc)
        rows.append(np.asarray(scores, dtype=np.float32))

    s0, g0 = dict(p.stats), p.guard.no_signal_windows
    try:
        source = open_source(unit.path, p.sample_rate, work.spec, unit.span)
    except SourceError as exc:
        res.error = str(exc)
    else:
        if unit.start_utc is not None and source.time_source == "replay-time":
            source.start_utc = unit.start_utc
        p.on_window = on_window
        try:
            _run(p, source, unit, res)
        finally:
            p.on_window = None
    res.scores = np.stack(rows) if rows else np.zeros((0, len(p.bundle.labels)), np.float32)
    res.no_signal_windows = p.guard.no_signal_windows - g0
    res.frontend_s = p.stats["frontend_s"] - s0["frontend_s"]
    res.invoke_s = p.stats["invoke_s"] - s0["invoke_s"]
    res.wall_s = time.perf_counter() - t_start
    res.cpu_s = time.process_time() - c_start
    res.start_cpu_s, _START_CPU[0] = _START_CPU[0], 0.0
    res.peak_rss_mb = peak_rss_mb()
    heap.release_heap()  # the unit's freed blocks back to the system: a worker's memory does not creep up unit by unit
    return res


def _run(p, source: FileSource, unit: Unit, res: UnitResult) -> None:
    """Every block of ``source`` through the pipeline, as ``Runtime.run_source`` feeds it (the same end of
    audio, time and error text), without the runtime's store, sinks and sessions, which stay in the parent."""
    from edge.sources import timed

    sr = p.sample_rate
    p.begin(source.name, source.time_source)

    def spent(seconds: float) -> None:
        res.decode_s += seconds

    try:
        for block in timed(source.blocks(None), spent):
            p.feed(block)
            seconds = len(block.samples) / sr
            res.audio_end_s = max(res.audio_end_s, block.offset_s + seconds)
            res.end_utc = block.start_utc + timedelta(seconds=seconds)
            first = round(block.offset_s * sr)
            own = block.samples if unit.own_end is None else block.samples[: max(0, unit.own_end - first)]
            if len(own):
                res.nonfinite_samples += len(own) - int(np.count_nonzero(np.isfinite(own)))
    except SourceError as exc:
        res.error = f"{exc} ({res.audio_end_s:.1f} s analysed before the error)"
        log.warning("%s", exc)
    p.finish()


# -- executors (parent) ------------------------------------------------------------------

def worker_environment() -> None:
    """What every worker inherits: one BLAS thread, and freed memory kept in the heap (edge/heap.py)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(heap.MMAP_THRESHOLD))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(heap.TRIM_THRESHOLD))


#: what every worker imports (a missing one is skipped)
PRELOAD = [
    "edge.service.workers", "edge.detection.pipeline", "edge.contract.bundle", "edge.contract.interpreter",
    "ai_edge_litert.interpreter", "soundfile", "soxr", "edge.sources.flac",
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
    _START_CPU[0] = time.process_time()


def _warm(work: Work) -> None:
    """Load the model for ``work`` in this worker (thread) now; a failure shows again on the first unit."""
    try:
        _pipeline(work)
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
                                         initargs=(work.to_send() if work is not None else None, os.getpid()))
        for _ in range(jobs):  # workers start on demand: ask for all of them now
            self._pool.submit(_nothing)

    def submit(self, unit: Unit, work: Work):
        return self._pool.submit(analyse, unit, work.light)  # the bundle went with the worker's start

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
    """Submit every unit, then yield the results in the units' order (the workers run ahead). A result is
    let go once taken: a Dask worker keeps a result while its future lives, so holding them all kept every
    unit's windows on the workers (and in this process) until the end of an archive of any size."""
    futures: list[Any] = [executor.submit(u, work) for u in units]
    for i in range(len(futures)):
        yield _take(futures, i)  # no name in this frame holds it while the caller works


def _take(futures: list[Any], i: int) -> Any:
    f, futures[i] = futures[i], None
    return f.result()


