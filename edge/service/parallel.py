"""Replay on every core: files, and pieces of long files, analysed in worker processes; one writer.

The work is cut into units (``plan``, here; the workers are in
``edge.service.workers``): a whole file, or for a file much
longer than the others a piece of it that starts and ends at window
boundaries. A worker (``analyse``, in its own interpreter: a ``spawn`` or
``forkserver`` process, one BLAS and one interpreter thread) decodes and
resamples its unit (``FileSource(span=...)`` gives bit for bit the samples
the whole file gives there), computes the front-end and runs the model, and
returns the scores of every window with its offset and time - not
detections. It feeds the pipeline as ``Runtime.run_source`` does, without
loading the configuration's classes or the store.
The parent (``ParallelReplay``) feeds the windows of each file, in order, to
one post-processor and stores the events through its runtime, so events
that cross a piece boundary merge, ids, progress, the stored rows and the
summary are those of one job, and no window is lost or doubled.

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
import time
from datetime import timedelta
from typing import Any, Iterator, Optional, Sequence

import numpy as np


from edge.sources.file import FileSource, SourceError
from edge.service.workers import (InlineExecutor, ProcessExecutor, Unit, UnitResult, Work,  # noqa: F401 - the API
                                  analyse, open_source, results_in_order)

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


# -- planning (parent) -------------------------------------------------------------------

def window_geometry(bundle, overlap_s: Optional[float]) -> tuple[int, int, int]:
    """(samples between window starts, samples a window's frames cover, frames per window)."""
    from edge.detection.pipeline import window_hop_frames

    fe = bundle.frontend
    hop_frames = window_hop_frames(bundle, overlap_s)
    return hop_frames * fe.hop_length, (fe.n_frames - 1) * fe.hop_length + fe.n_fft, hop_frames


def split_points(n_samples: int, hop: int, span: int, pieces: int,
                 group: int = 1) -> list[tuple[int, int, Optional[int]]]:
    """(first window, first sample, end sample or None) of ``pieces`` pieces of a file of ``n_samples``.

    Window k starts at k * hop and needs ``span`` samples; the file's regular windows are split
    evenly, in whole groups of ``group`` windows (a segment model's windows per invoke: a piece's
    chunks are then those of one job); every piece but the last ends with its last window's samples.
    """
    windows = 0 if n_samples < span else 1 + (n_samples - span) // hop
    groups = -(-windows // group)
    pieces = max(1, min(pieces, groups // 2))
    if pieces == 1:
        return [(0, 0, None)]
    bounds = [min(windows, group * round(i * groups / pieces)) for i in range(pieces + 1)]
    out = []
    for i in range(pieces):
        k0, k1 = bounds[i], bounds[i + 1]
        out.append((k0, k0 * hop, None if i == pieces - 1 else (k1 - 1) * hop + span))
    return out


def plan(sources: Sequence[tuple[int, FileSource]], bundle, overlap_s: Optional[float], jobs: int,
         piece_s: Optional[float] = None) -> list[Unit]:
    """Units for the opened files, in order. Files much longer than the average share of a job are
    split (when their format seeks exactly) into pieces of about ``piece_s`` seconds (default: the
    total over 4 x jobs, within MIN_PIECE_S..MAX_PIECE_S), of whole chunks of a segment model's windows."""
    sr = bundle.frontend.sample_rate
    hop, span, _ = window_geometry(bundle, overlap_s)
    group = bundle.segment.windows if bundle.segment is not None else 1
    total_s = sum(src.output_samples for _, src in sources) / sr
    if piece_s is None:  # 4 units per job at least: the load evens out when a core is slower than another
        piece_s = min(MAX_PIECE_S, max(MIN_PIECE_S, total_s / (4 * jobs)))
    units: list[Unit] = []
    for i, src in sources:
        n = src.output_samples
        fmt = src.format.upper()
        seeks = fmt in EXACT_SEEK or fmt.split("/")[0] in EXACT_SEEK
        # a start time taken from the clock is the parent's, so every piece has the same
        t0 = src.start_utc if src.time_source == "replay-time" else None
        pieces = int(n / sr // piece_s) if jobs > 1 and seeks and n / sr >= 1.5 * piece_s else 1
        pts = split_points(n, hop, span, pieces, group)
        for j, (k0, first, end) in enumerate(pts):
            last = j == len(pts) - 1
            units.append(Unit(i, str(src.path.resolve()), (first, end) if len(pts) > 1 else None, k0, last, t0,
                              None if last else pts[j + 1][1]))
    return units


# -- the one writer (parent) -------------------------------------------------------------

class ParallelReplay:
    """Files through worker processes (or a cluster's), their windows through one post-processor into ``runtime``.

    With fewer than two units of work and no cluster the files are replayed in this process, as one job.
    """

    def __init__(self, runtime, job, *, jobs: int, executor=None, piece_s: Optional[float] = None,
                 progress: bool = False):
        self.runtime = runtime
        self.work = Work(job)
        self.jobs = executor.jobs if executor is not None else jobs
        self.executor = executor
        self.piece_s = piece_s
        self.progress = progress
        self.units: list[Unit] = []
        self.workers: dict[str, float] = {}  # worker -> its peak RSS (MB)
        self.cpu_s = 0.0  # the workers' CPU time on the units and to start
        self.start_cpu_s = 0.0  # of which to start (local workers: imports, the model)

    def run(self, paths: Sequence) -> Iterator[tuple[Any, Any]]:
        """(path, SourceRun) for every file, in order, as ``replay_file`` gives them."""
        from edge.service.runtime import SourceRun

        rt, p = self.runtime, self.runtime.pipeline
        opened: dict[int, FileSource] = {}
        refused: dict[int, Any] = {}
        for i, path in enumerate(paths):  # opened here too: the same refusals, in the same order, as one job
            try:
                src = open_source(str(path), p.sample_rate, self.work.spec)
            except SourceError as exc:
                refused[i] = SourceRun(str(path), error=str(exc))
                continue
            src.close()  # only its header and start time are needed here
            opened[i] = src
        self.units = plan(list(opened.items()), p.bundle, p.overlap_s, self.jobs, self.piece_s)
        local = self.executor is None or isinstance(self.executor, ProcessExecutor)
        if len(self.units) < 2 and local:  # nothing to share out: this process, as one job
            from edge.service.replay import replay_file

            if self.executor is not None:
                self.executor.close()
            for path in paths:
                yield path, replay_file(rt, path, self.work.job, progress=self.progress)
            return
        if self.executor is None:
            self.executor = ProcessExecutor(min(self.jobs, len(self.units)), self.work)
        split = sum(1 for u in self.units if u.span is not None and u.span[0] == 0)
        log.info("replay: %d unit(s) of work (%d file(s), %d split into pieces) on %s", len(self.units),
                 len(opened), split, self.executor.description)
        by_file: dict[int, list[Unit]] = {}
        for u in self.units:
            by_file.setdefault(u.file, []).append(u)
        bar = None
        if self.progress:
            from tqdm import tqdm

            total = sum(src.output_samples for src in opened.values()) / p.sample_rate
            bar = tqdm(total=round(total), unit="s", desc=f"replay, {self.executor.description}", leave=False)
        results = results_in_order(self.executor, self.units, self.work)
        cancel = True
        try:
            for i, path in enumerate(paths):
                if i in refused:
                    log.warning("%s", refused[i].error)
                    yield path, refused[i]
                elif not rt.stop_event.is_set():
                    yield path, self._file(opened[i], [next(results) for _ in by_file[i]], bar)
            cancel = rt.stop_event.is_set()
            if self.workers:
                log.info("replay: analysed by %d worker process(es), peak RSS %s MB, %.2f CPU s (%.2f of it starting); "
                         "this process %.2f CPU s", len(self.workers),
                         ", ".join(f"{mb:.0f}" for _, mb in sorted(self.workers.items())), self.cpu_s,
                         self.start_cpu_s, time.process_time())
        finally:
            if bar is not None:
                bar.close()
            self.executor.close(cancel=cancel)

    def _file(self, src: FileSource, results: list[UnitResult], bar) -> Any:
        """One file's windows, in order, through post-processing, the store, the sinks and the session."""
        from edge.detection.postprocess import ModelInfo, PostProcessor, SourceInfo

        rt, p = self.runtime, self.runtime.pipeline
        run = rt.begin_source(src)  # the runtime's own steps: sinks, session and delivery as run_source does them
        post = PostProcessor(ModelInfo.from_bundle(p.bundle), SourceInfo(p.device_id, src.name, src.time_source),
                             p.detection, p.clock)
        index = 0
        for res in results:
            self.workers[res.worker] = max(self.workers.get(res.worker, 0.0), res.peak_rss_mb)
            self.cpu_s += res.cpu_s + res.start_cpu_s
            self.start_cpu_s += res.start_cpu_s
            if bar is not None:
                bar.update(max(0.0, res.audio_end_s - (res.unit.span or (0,))[0] / p.sample_rate))
            if run.error is not None or rt.stop_event.is_set():
                continue  # the file broke off in an earlier piece: one job stops there too
            if res.error is not None and res.audio_end_s == 0 and not res.windows:
                run.error = res.error
                break
            dets = []
            scores = res.scores if res.scores is not None else np.zeros((0, 0), np.float32)  # no windows
            for j in range(res.windows):
                dets += post.add(index + j, res.offsets[j], res.utcs[j], scores[j])
            index += res.windows
            if res.windows:
                rt.health.note_windows(res.windows, res.invoke_s / res.windows)
            p.guard.no_signal_windows += res.no_signal_windows  # the summary reports them as one job's
            p.guard.nonfinite_samples += res.nonfinite_samples
            start_s = (res.unit.span or (0,))[0] / p.sample_rate
            start = src.start_utc + timedelta(seconds=start_s)
            rt.took(run, start, res.end_utc or start, start_s, dets)
            run.audio_s = max(run.audio_s, res.audio_end_s)
            run.decode_s += res.decode_s
            run.error = res.error
        run = rt.end_source(run, post.close())
        if run.error is not None:
            log.warning("%s", run.error)
        return run


def start_workers(job, jobs: int, dask: Optional[str], paths: Sequence):
    """The executor a replay of ``paths`` will use, started now (before the caller loads its own model):
    the Dask cluster at ``dask`` (``edge.service.cluster.ClusterError`` if it cannot be used), local
    worker processes when there is work for more than one, else None (replay in this process)."""
    if dask:
        from edge.service.cluster import DaskExecutor

        return DaskExecutor(dask, Work(job))
    if jobs < 2 or not paths:
        return None
    if len(paths) == 1:  # one file: worth workers only if it is long enough to split
        import soundfile as sf

        try:
            if sf.info(str(paths[0])).duration < 1.5 * MIN_PIECE_S:
                return None
        except Exception:  # noqa: BLE001 - refused with its reason by the replay
            return None
    return ProcessExecutor(jobs, Work(job))


def replay_parallel(runtime, paths: Sequence, job, executor, *, piece_s: Optional[float] = None,
                    progress: bool = False) -> Iterator[tuple[Any, Any]]:
    """(path, SourceRun) for every file, analysed by ``executor`` (from ``start_workers``)."""
    return ParallelReplay(runtime, job, jobs=executor.jobs, executor=executor, piece_s=piece_s,
                          progress=progress).run(paths)
