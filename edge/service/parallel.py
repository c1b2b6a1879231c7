"""Replay on every core: files, and pieces of long files, analysed in worker processes; one writer.

The work is cut into units (``plan``): a whole file, or for a file much
longer than the others a piece of it that starts and ends at window
boundaries. A worker (``analyse``, in its own interpreter: a ``spawn`` or
``forkserver`` process, one BLAS and one interpreter thread) decodes and
resamples its unit (``FileSource(span=...)`` gives bit for bit the samples
the whole file gives there), computes the front-end and runs the model, and
returns the scores of every window with its offset and time - not
detections. The parent (``ParallelReplay``) feeds the windows of each file,
in order, to one post-processor and stores the events through the runtime,
so events that cross a piece boundary merge, ids, progress, the stored rows
and the summary are those of one job, and no window is lost or doubled.

One writer, the parent, because workers send back a few hundred bytes per
window (less than 1 % of their work) and SQLite takes one writer at a time:
several writing processes would wait on each other's locks, need WAL on a
local disk (not NFS), and could not keep the order of one job's rows; the
same results path then serves a cluster (``edge.service.cluster``), whose
workers may not reach the store at all.
"""
from __future__ import annotations

import logging
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from edge.sources import timed
from edge.sources.file import FileSource, SourceError

log = logging.getLogger(__name__)

#: formats whose decoder seeks to the exact sample (libsndfile; MP3 and Opus do not, so they are never split)
EXACT_SEEK = {"WAV", "WAVEX", "W64", "RF64", "AIFF", "CAF", "FLAC", "OGG/VORBIS"}  # "FORMAT" or "FORMAT/SUBTYPE"
MIN_PIECE_S = 60.0  # a piece shorter than this costs more to start than it saves
MAX_PIECE_S = 1800.0  # nor longer: the load stays balanced and progress moves


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkSettings:
    """Everything a worker needs to build the pipeline the parent would (picklable)."""

    bundle: str
    public_key: str
    max_bundle_bytes: int
    overlap_s: Optional[float]
    detection: Any  # edge.config DetectionConfig or None
    device_id: str
    channel: Optional[int] = None
    start_utc: Optional[datetime] = None
    timezone: Optional[str] = None
    threads: int = 1
    #: the bundle and public key themselves, for workers on other machines (a cluster); else read from the paths
    bundle_data: Optional[bytes] = field(default=None, repr=False)
    public_key_data: Optional[bytes] = field(default=None, repr=False)

    def with_data(self) -> "WorkSettings":
        """These settings carrying the bundle's and the key's bytes (workers need not see the paths)."""
        from dataclasses import replace
        from pathlib import Path

        return replace(self, bundle_data=Path(self.bundle).read_bytes(),
                       public_key_data=Path(self.public_key).read_bytes())

    def open(self, path: str, sample_rate: int, span: Optional[tuple[int, Optional[int]]] = None) -> FileSource:
        return FileSource(path, sample_rate, channel=self.channel, start_utc=self.start_utc, block_s=4.0,
                          span=span, timezone=self.timezone)


@dataclass(frozen=True)
class Unit:
    """A whole file (``span`` None) or output samples ``span`` of it, windows from ``first_window``."""

    file: int  # index in the replay's list of files
    path: str
    span: Optional[tuple[int, Optional[int]]] = None
    first_window: int = 0
    last: bool = True  # the file's last unit: it also scores the tail window
    start_utc: Optional[datetime] = None  # the file's start when it came from the parent's clock


@dataclass
class UnitResult:
    unit: Unit
    offsets: list[float] = field(default_factory=list)
    utcs: list[datetime] = field(default_factory=list)
    scores: Optional[np.ndarray] = None  # (windows, labels) float32
    audio_end_s: float = 0.0  # offset of the end of the audio analysed
    error: Optional[str] = None  # the SourceError that cut the unit short
    decode_s: float = 0.0
    frontend_s: float = 0.0
    invoke_s: float = 0.0
    wall_s: float = 0.0
    worker: str = ""
    peak_rss_mb: float = 0.0

    @property
    def windows(self) -> int:
        return len(self.offsets)


# -- planning (parent) -------------------------------------------------------------------

def window_geometry(bundle, overlap_s: Optional[float]) -> tuple[int, int, int]:
    """(samples between window starts, samples a window's frames cover, frames per window)."""
    from edge.detection.pipeline import window_hop_frames

    fe = bundle.frontend
    hop_frames = window_hop_frames(bundle, overlap_s)
    return hop_frames * fe.hop_length, (fe.n_frames - 1) * fe.hop_length + fe.n_fft, hop_frames


def split_points(n_samples: int, hop: int, span: int, pieces: int) -> list[tuple[int, int, Optional[int]]]:
    """(first window, first sample, end sample or None) of ``pieces`` pieces of a file of ``n_samples``.

    Window k starts at k * hop and needs ``span`` samples; the file's regular windows are split
    evenly; every piece but the last ends with its last window's samples.
    """
    windows = 0 if n_samples < span else 1 + (n_samples - span) // hop
    pieces = max(1, min(pieces, windows // 2))
    if pieces == 1:
        return [(0, 0, None)]
    bounds = [round(i * windows / pieces) for i in range(pieces + 1)]
    out = []
    for i in range(pieces):
        k0, k1 = bounds[i], bounds[i + 1]
        out.append((k0, k0 * hop, None if i == pieces - 1 else (k1 - 1) * hop + span))
    return out


def plan(sources: Sequence[tuple[int, FileSource]], bundle, overlap_s: Optional[float], jobs: int,
         piece_s: Optional[float] = None) -> list[Unit]:
    """Units for the opened files, in order. Files much longer than the average share of a job are
    split (when their format seeks exactly) into pieces of about ``piece_s`` seconds (default: the
    total over 2 x jobs, within MIN_PIECE_S..MAX_PIECE_S)."""
    sr = bundle.frontend.sample_rate
    hop, span, _ = window_geometry(bundle, overlap_s)
    total_s = sum(src.output_samples for _, src in sources) / sr
    if piece_s is None:
        piece_s = min(MAX_PIECE_S, max(MIN_PIECE_S, total_s / (2 * jobs)))
    units: list[Unit] = []
    for i, src in sources:
        n = src.output_samples
        fmt = src.format.upper()
        seeks = fmt in EXACT_SEEK or fmt.split("/")[0] in EXACT_SEEK
        # a start time taken from the clock is the parent's, so every piece has the same
        t0 = src.start_utc if src.time_source == "replay-time" else None
        pieces = int(n / sr // piece_s) if jobs > 1 and seeks and n / sr >= 1.5 * piece_s else 1
        pts = split_points(n, hop, span, pieces)
        for j, (k0, first, end) in enumerate(pts):
            units.append(Unit(i, str(src.path), (first, end) if len(pts) > 1 else None, k0, j == len(pts) - 1, t0))
    return units


# -- the work (worker) -------------------------------------------------------------------

_LOCAL = threading.local()  # one pipeline per worker thread (a Dask worker may run several)


def _pipeline(s: WorkSettings):
    """The worker's pipeline for these settings, built once per process (per thread)."""
    key = (s.bundle, s.public_key, s.max_bundle_bytes, s.overlap_s, repr(s.detection), s.device_id, s.threads,
           hash(s.bundle_data))
    cached = getattr(_LOCAL, "pipeline", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    from edge.contract.bundle import load_bundle, parse_bundle
    from edge.contract.interpreter import load_model
    from edge.contract.signing import load_public_key
    from edge.detection.pipeline import Pipeline

    if s.bundle_data is not None and s.public_key_data is not None:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        bundle = parse_bundle(s.bundle_data, load_pem_public_key(s.public_key_data), path=s.bundle,
                              max_bytes=s.max_bundle_bytes)
    else:
        bundle = load_bundle(s.bundle, load_public_key(s.public_key), max_bytes=s.max_bundle_bytes)
    p = Pipeline(bundle, load_model(bundle, num_threads=s.threads), detection=s.detection,
                 overlap_s=s.overlap_s, device_id=s.device_id)
    _LOCAL.pipeline = (key, p)
    return p


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analyse(unit: Unit, settings: WorkSettings) -> UnitResult:
    """Decode, front-end and model for one unit: the scores of its windows (runs in a worker)."""
    t_start = time.perf_counter()
    p = _pipeline(settings)
    res = UnitResult(unit, worker=f"{os.uname().nodename}:{os.getpid()}")
    rows: list[np.ndarray] = []

    def on_window(offset_s, start_utc, scores):
        res.offsets.append(offset_s)
        res.utcs.append(start_utc)
        rows.append(np.asarray(scores, dtype=np.float32))

    s0 = dict(p.stats)
    p.on_window = on_window
    try:
        source = settings.open(unit.path, p.sample_rate, unit.span)
        if unit.start_utc is not None and source.time_source == "replay-time":
            source.start_utc = unit.start_utc
        p.begin(source.name, source.time_source)
        def spent(seconds: float) -> None:
            res.decode_s += seconds

        for block in timed(source.blocks(None), spent):
            p.feed(block)
            res.audio_end_s = block.offset_s + len(block.samples) / p.sample_rate
    except SourceError as exc:
        res.error = f"{exc} ({res.audio_end_s:.1f} s analysed before the error)"
    finally:
        if unit.last or res.error:
            p.finish()  # the tail window (one job scores it at the end of the file, or where decoding broke off)
        p.on_window = None
    res.scores = np.stack(rows) if rows else np.zeros((0, len(p.bundle.labels)), np.float32)
    res.frontend_s = p.stats["frontend_s"] - s0["frontend_s"]
    res.invoke_s = p.stats["invoke_s"] - s0["invoke_s"]
    res.wall_s = time.perf_counter() - t_start
    res.peak_rss_mb = peak_rss_mb()
    return res


# -- executors (parent) ------------------------------------------------------------------

def worker_environment() -> None:
    """What every worker inherits: one BLAS thread, and freed memory kept in the heap (see edge/__main__.py)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(16 * 1024 * 1024))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 * 1024 * 1024))


class ProcessExecutor:
    """``jobs`` worker processes on this machine (forkserver where there is one, else spawn)."""

    def __init__(self, jobs: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        worker_environment()
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.jobs = jobs
        self.description = f"{jobs} worker process(es) ({method})"
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context(method))

    def submit(self, unit: Unit, settings: WorkSettings):
        return self._pool.submit(analyse, unit, settings)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


class InlineExecutor:
    """The units in this process, one after the other (tests; --jobs 1 uses the runtime directly)."""

    jobs = 1
    description = "in this process"

    def submit(self, unit: Unit, settings: WorkSettings):
        from concurrent.futures import Future

        f: Future = Future()
        try:
            f.set_result(analyse(unit, settings))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            f.set_exception(exc)
        return f

    def close(self, cancel: bool = False) -> None:
        pass


def results_in_order(executor, units: Iterable[Unit], settings: WorkSettings,
                     on_result: Optional[Callable[[UnitResult], None]] = None):
    """Submit every unit, then yield the results in the units' order (workers run ahead)."""
    futures = [executor.submit(u, settings) for u in units]
    for f in futures:
        r = f.result()
        if on_result is not None:
            on_result(r)
        yield r


# -- the one writer (parent) -------------------------------------------------------------

@dataclass
class FileOutcome:
    """One file of a parallel replay: what the runtime's ``run_source`` returns, or why it was refused."""

    path: str
    run: Any = None  # edge.service.runtime.SourceRun
    refused: Optional[str] = None
    windows: int = 0
    frontend_s: float = 0.0
    invoke_s: float = 0.0
    workers: set = field(default_factory=set)
    peak_rss_mb: float = 0.0


class ParallelReplay:
    """Files through ``executor``'s workers, their windows through one post-processor into ``runtime``."""

    def __init__(self, runtime, settings: WorkSettings, executor, *, piece_s: Optional[float] = None,
                 progress: bool = False):
        self.runtime = runtime
        self.settings = settings
        self.executor = executor
        self.piece_s = piece_s
        self.progress = progress
        self.units: list[Unit] = []

    def run(self, paths: Sequence) -> list[FileOutcome]:
        rt, p = self.runtime, self.runtime.pipeline
        outcomes = [FileOutcome(str(path)) for path in paths]
        opened: list[tuple[int, FileSource]] = []
        for i, path in enumerate(paths):  # opened here too: the same refusals, in the same order, as one job
            try:
                src = self.settings.open(str(path), p.sample_rate)
            except SourceError as exc:
                outcomes[i].refused = str(exc)
                log.warning("%s", exc)
                continue
            src.close()  # only its header and start time are needed here
            opened.append((i, src))
        self.units = plan(opened, p.bundle, self.settings.overlap_s, self.executor.jobs, self.piece_s)
        bar = None
        if self.progress:
            from tqdm import tqdm

            total = sum(src.output_samples for _, src in opened) / p.sample_rate
            bar = tqdm(total=round(total), unit="s", desc=f"replay ({self.executor.description})", leave=False)
        results = results_in_order(self.executor, self.units, self.settings)
        sources = dict(opened)
        try:
            current, skip = None, False
            state: dict = {}
            for res in results:
                i = res.unit.file
                if i != current:
                    if current is not None:
                        self._end_file(outcomes[current], sources[current], state)
                    current, skip = i, False
                    state = self._begin_file(sources[i])
                if bar is not None:
                    bar.update(round(res.audio_end_s - (res.unit.span or (0,))[0] / p.sample_rate))
                if skip or rt.stop_event.is_set():
                    continue
                skip = self._take(outcomes[i], sources[i], state, res)
            if current is not None:
                self._end_file(outcomes[current], sources[current], state)
        finally:
            if bar is not None:
                bar.close()
            self.executor.close(cancel=rt.stop_event.is_set())
        return outcomes

    def _begin_file(self, src: FileSource) -> dict:
        from edge.detection.postprocess import ModelInfo, PostProcessor, SourceInfo

        rt, p = self.runtime, self.runtime.pipeline
        run = rt.begin_source(src)
        post = PostProcessor(ModelInfo.from_bundle(p.bundle), SourceInfo(p.device_id, src.name, src.time_source),
                             p.detection, p.clock)
        return {"post": post, "run": run, "index": 0}

    def _take(self, out: FileOutcome, src: FileSource, state: dict, res: UnitResult) -> bool:
        """One unit's windows through post-processing into the store; True if the file broke off here."""
        from datetime import timedelta

        rt, p, run = self.runtime, self.runtime.pipeline, state["run"]
        post, k, dets = state["post"], state["index"], []
        scores = res.scores if res.scores is not None else np.zeros((0, 0), np.float32)  # no windows: no scores
        for j in range(res.windows):
            dets += post.add(k + j, res.offsets[j], res.utcs[j], scores[j])
        state["index"] = k + res.windows
        if res.windows:
            rt.health.note_windows(res.windows, res.invoke_s / res.windows)
        start_s = (res.unit.span or (0,))[0] / p.sample_rate
        if res.audio_end_s > start_s or dets:  # the session, the detections: as the runtime does for a block
            rt.took(run, src.start_utc + timedelta(seconds=start_s), src.start_utc + timedelta(seconds=res.audio_end_s),
                    start_s, dets)
        run.decode_s += res.decode_s
        out.windows += res.windows
        out.frontend_s += res.frontend_s
        out.invoke_s += res.invoke_s
        out.workers.add(res.worker)
        out.peak_rss_mb = max(out.peak_rss_mb, res.peak_rss_mb)
        if res.error:
            run.error = res.error
            log.warning("%s", res.error)
            return True
        return False

    def _end_file(self, out: FileOutcome, src: FileSource, state: dict) -> None:

        out.run = self.runtime.end_source(state["run"], state["post"].close())
