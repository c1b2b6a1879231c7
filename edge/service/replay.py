"""Replay: recordings through the one runtime, one file at a time, in any process.

``ReplayJob`` holds everything a process needs (the validated configuration,
the store path, channel, start time, pacing): plain, picklable values, so a
worker process (``--jobs``) or a cluster node can be handed one.
``open_replay(job)`` builds that process's runtime (model, pipeline, store,
the publisher when MQTT is on) and ``replay_file(runtime, path, job)`` runs
one file through it, returning a ``SourceRun`` (picklable: the detections,
audio seconds, timings, the reason it was refused). The store de-duplicates
on detection ids, so files may be replayed in any order, in any process.

``ReplayStats`` adds the runs up for the summary.
"""
from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

from edge.config import Config
from edge.service.runtime import REPLAY_SERVICES, Runtime, SourceRun
from edge.sources.file import REPLAY_BLOCK_S, FileSource, SourceError
from edge.types import AudioBlock, DetectionSink

log = logging.getLogger(__name__)

MB = 1024 * 1024
PROGRESS_MIN_S = 300.0  # show a progress bar for files longer than this (on a terminal)


class ReplaySetupError(RuntimeError):
    """The model, key, store or broker cannot be used; the message names the file or setting."""


@dataclass(frozen=True)
class ReplayJob:
    """What a process needs to replay files (picklable)."""

    cfg: Config  # model, detection, device id, location, mqtt; store.path is the store used
    use_store: bool = True  # False: --no-db
    channel: Optional[int] = None  # None: mix all channels down
    start_utc: Optional[datetime] = None  # None: from the file name, else the time of the replay
    realtime: bool = False


def open_replay(job: ReplayJob, *, sinks: Sequence[DetectionSink] = (), stop: Optional[threading.Event] = None,
                services: bool = True) -> Runtime:
    """This process's runtime for ``job``: the configured bundle, a pipeline, the store, (the publisher).

    ``services=False``: start them later with ``start_services``. Raises ``ReplaySetupError``.
    """
    from edge.contract.bundle import BundleError, load_bundle
    from edge.contract.interpreter import InterpreterError, load_model
    from edge.contract.signing import SigningKeyError, load_public_key
    from edge.detection.pipeline import Pipeline, PipelineError
    from edge.outputs.store import Store, StoreError

    cfg = job.cfg
    try:
        bundle = load_bundle(cfg.model.bundle_path, load_public_key(cfg.model.public_key_path),
                             max_bytes=int(cfg.model.max_bundle_mb * MB))
        model = load_model(bundle, num_threads=cfg.model.num_threads)
        pipeline = Pipeline(bundle, model, detection=cfg.detection, overlap_s=cfg.model.overlap_s,
                            device_id=cfg.device_id)
        store = Store(cfg.store.path) if job.use_store else None
    except (BundleError, SigningKeyError, InterpreterError, PipelineError, StoreError, OSError) as exc:
        raise ReplaySetupError(str(exc)) from None
    rt = Runtime(cfg, pipeline, store, sinks=sinks, stop=stop)
    if services:
        start_services(rt)
    return rt


def start_services(rt: Runtime) -> None:
    """Replay's services (the MQTT publisher when on); raises ``ReplaySetupError`` (the runtime stopped)."""
    from edge.outputs.mqtt.client import MQTTSetupError

    try:
        rt.start_services(REPLAY_SERVICES)
    except MQTTSetupError as exc:
        rt.stop()
        raise ReplaySetupError(str(exc)) from None


def replay_file(rt: Runtime, path: str | Path, job: ReplayJob, *, progress: bool = False) -> SourceRun:
    """One file through ``rt``; a refused file comes back with ``error`` set and nothing analysed."""
    try:
        source = FileSource(path, rt.pipeline.sample_rate, channel=job.channel, start_utc=job.start_utc,
                            timezone=job.cfg.location.timezone, block_s=0.5 if job.realtime else REPLAY_BLOCK_S)
    except SourceError as exc:
        log.warning("%s", exc)
        return SourceRun(str(path), error=str(exc))
    on_block: Optional[Callable[[AudioBlock], None]] = None
    bar = None
    if progress and source.duration_s >= PROGRESS_MIN_S:
        from tqdm import tqdm

        bar = tqdm(total=round(source.duration_s), unit="s", desc=Path(path).name, file=sys.stderr, leave=False)
        sr = rt.pipeline.sample_rate

        def on_block(block: AudioBlock) -> None:
            bar.update(round(block.offset_s + len(block.samples) / sr) - bar.n)

    try:
        return rt.run_source(source, realtime=job.realtime, on_block=on_block)
    finally:
        if bar is not None:
            bar.close()


@dataclass
class ReplayStats:
    """The runs of one replay, added up."""

    files_ok: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_s: float = 0.0
    wall_s: float = 0.0
    decode_s: float = 0.0
    store_s: float = 0.0
    output_s: float = 0.0
    detections: int = 0
    new: int = 0
    species: Counter = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)

    def add(self, path: str | Path, run: SourceRun) -> None:
        if run.error is None:
            self.files_ok += 1
        else:
            self.refused.append((str(path), run.error))
        self.audio_s += run.audio_s
        self.decode_s += run.decode_s
        self.store_s += run.store_s
        self.output_s += run.output_s
        self.detections += len(run.detections)
        self.new += run.new
        for d in run.detections:
            self.species[d.label] += 1
            self.names[d.label] = d.common_name

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("inf")
