"""One runtime for ``run`` and ``replay``: source -> pipeline -> store -> sinks and services.

``Runtime`` is given what the command assembled (the configuration, a
pipeline with its model, the SQLite store or none, the sinks) and wires the
rest the same way for live capture and for replay:

- services from ``SERVICE_FACTORIES`` (live: the MQTT publisher, model
  updates) or ``REPLAY_SERVICES`` (the publisher, when MQTT is on), started
  in order after the store and the model;
- ``run_source(source)``: every block through the pipeline; each batch of
  detections committed to the store first (``deliver``), then handed to the
  sinks (writers, clips) and, the new ones only, to the services (the
  publisher sends what is already safe); listening sessions
  (``edge.service.sessions``) and health numbers kept as the audio flows;
- ``stop()``: the one stop event set, the session closed, the sinks closed,
  the services stopped in reverse order, the store closed - in that order.

Detections go into the store through ``edge.outputs.journal.StoreGuard``:
what the store refuses (full disk, locked, read-only) waits in a journal
beside it and is retried; the services see detections once they are stored.
``stop()`` returns how many are still outside the store (the commands then
exit ``EXIT_UNSTORED``).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from edge.config import Config
from edge.contract.record import Detection
from edge.service.health import Health
from edge.service.sessions import Sessions
from edge.sources import SourceError, timed
from edge.types import AudioBlock, AudioSource, DetectionSink, Service

if TYPE_CHECKING:  # loaded where used: the daemon starts in about a second
    from edge.detection.pipeline import Pipeline
    from edge.outputs.journal import StoreGuard
    from edge.outputs.store import Store
    from edge.service.modelstore import ModelStore
    from edge.service.updates import Running

log = logging.getLogger(__name__)

@dataclass
class RuntimeContext:
    """What a service factory gets: everything already wired, nothing started."""

    cfg: Config
    stop: threading.Event
    health: Health
    store: Optional[Store]  # the detection store (also the MQTT outbox); None: replay --no-db
    pipeline: Pipeline  # set_model is thread-safe
    running: Optional[Running] = None  # live: the model in use (replay loads one bundle, no updates)
    model_store: Optional[ModelStore] = None  # live: installed model bundles (not the detection store)
    services: dict[str, Service] = field(default_factory=dict)  # name -> service started before this one


#: ``factory(ctx) -> Service or None``: started in list order, stopped in reverse.
ServiceFactory = Callable[[RuntimeContext], Optional[Service]]


def mqtt_service(ctx: RuntimeContext) -> Optional[Service]:
    if not ctx.cfg.mqtt.enabled or ctx.store is None:
        return None
    from edge.outputs.mqtt.publisher import Publisher
    from edge.outputs.store import Store

    path = ctx.cfg.store.path  # the publisher opens its own connection on its own thread
    return Publisher.from_config(ctx.cfg, lambda: Store(path), health=ctx.health, stop=ctx.stop)


def updates_service(ctx: RuntimeContext) -> Optional[Service]:
    # Always made when live, even without MQTT: it also clears the crash-loop counter once a swapped-in
    # model is healthy and records clean stops (which are not crashes). It subscribes to the model
    # topics only with MQTT on and updates.enabled.
    if ctx.running is None or ctx.model_store is None:
        return None
    from edge.outputs.mqtt.publisher import Publisher
    from edge.service.updates import UpdateService

    pub = ctx.services.get("mqtt")
    publisher = pub if isinstance(pub, Publisher) else None
    return UpdateService(ctx.cfg, ctx.model_store, ctx.running, ctx.pipeline, publisher=publisher,
                         topics=publisher.topics if publisher is not None else None, stop_event=ctx.stop,
                         progress=lambda: ctx.health.windows)


def retention_service(ctx: RuntimeContext) -> Optional[Service]:
    from edge.outputs.retention import service_factory

    return service_factory(ctx)


def alerts_service(ctx: RuntimeContext) -> Optional[Service]:
    from edge.service.alerts import service_factory

    return service_factory(ctx)


def health_file_service(ctx: RuntimeContext) -> Optional[Service]:
    from edge.outputs.healthfile import service_factory

    return service_factory(ctx)


def web_service(ctx: RuntimeContext) -> Optional[Service]:
    from edge.outputs.web.service import service_factory

    return service_factory(ctx)


#: the live daemon's services; add one with its factory here
SERVICE_FACTORIES: list[tuple[str, ServiceFactory]] = [
    ("mqtt", mqtt_service),
    ("updates", updates_service),
    ("retention", retention_service),
    ("alerts", alerts_service),
    ("health_file", health_file_service),
    ("web", web_service),
]
#: replay's: publishing what it stores, when MQTT is on (no model updates)
REPLAY_SERVICES: list[tuple[str, ServiceFactory]] = [("mqtt", mqtt_service)]


@dataclass
class SourceRun:
    """What one source gave: audio analysed, detections, timings; ``error`` if it broke off."""

    name: str
    audio_s: float = 0.0
    detections: list[Detection] = field(default_factory=list)
    new: int = 0  # of those, not already in the store
    error: Optional[str] = None
    decode_s: float = 0.0
    store_s: float = 0.0
    output_s: float = 0.0


def paced(blocks: Iterator[AudioBlock], sample_rate: int, stop: threading.Event) -> Iterator[AudioBlock]:
    """The blocks at real-time speed, as a microphone delivers them (replay --realtime)."""
    t0 = time.perf_counter()
    for block in blocks:
        yield block
        lag = block.offset_s + len(block.samples) / sample_rate - (time.perf_counter() - t0)
        if lag > 0 and stop.wait(lag):
            return


class Runtime:
    """Source -> pipeline -> store -> sinks and services, for ``run`` and ``replay`` alike."""

    def __init__(self, cfg: Config, pipeline: Pipeline, store: Optional[Store], *,
                 health: Optional[Health] = None, stop: Optional[threading.Event] = None,
                 sinks: Sequence[DetectionSink] = (), running: Optional[Running] = None,
                 model_store: Optional[ModelStore] = None):
        self.cfg = cfg
        self.pipeline = pipeline
        self.store = store
        self.stop_event = stop or threading.Event()
        self.health = health or Health(cfg.device_id, cfg.state_dir)
        self.sinks = list(sinks)
        self.services: list[tuple[str, Service]] = []
        self.context = RuntimeContext(cfg, self.stop_event, self.health, store, pipeline, running, model_store)
        self.source: Optional[AudioSource] = None
        self.sessions = Sessions(store, cfg.device_id, refresh_s=cfg.status_interval_s, settings=self.settings,
                                 on_model_change=lambda b: self.health.note_model(b.version, b.sha256))
        self.guard: Optional[StoreGuard] = None
        if store is not None:
            from edge.outputs.journal import StoreGuard

            self.guard = StoreGuard(store)  # what the store cannot take waits in <store>.journal
        self._last_end: Optional[datetime] = None
        self._stopped = False
        self.unstored = 0
        b = pipeline.bundle
        self.health.note_model(b.version, b.sha256)

    # -- start ---------------------------------------------------------------------
    def start_services(self, factories: Sequence[tuple[str, ServiceFactory]]) -> None:
        """Make and start each service in order (a factory may return None: not configured)."""
        for name, factory in factories:
            svc = factory(self.context)
            if svc is None:
                continue
            svc.start()
            self.services.append((name, svc))
            self.context.services[name] = svc
            log.info("service %s started", name)

    # -- the flow ------------------------------------------------------------------
    def run_source(self, source: AudioSource, *, realtime: bool = False,
                   on_block: Optional[Callable[[AudioBlock], None]] = None) -> SourceRun:
        """Every block of ``source`` through the pipeline and out; the source's open events closed at its end."""
        p = self.pipeline
        run = self.begin_source(source)

        def spent(seconds: float) -> None:
            run.decode_s += seconds

        blocks = timed(source.blocks(self.stop_event), spent)  # decoding time, without the pacing's waits
        if realtime:
            blocks = paced(blocks, p.sample_rate, self.stop_event)
        try:
            for block in blocks:
                dets = self._feed(block)
                for sink in self.sinks:
                    sink.add_audio(block)
                seconds = len(block.samples) / p.sample_rate
                self.took(run, block.start_utc, block.start_utc + timedelta(seconds=seconds), block.offset_s, dets)
                if on_block is not None:
                    on_block(block)
        except SourceError as exc:
            run.error = f"{exc} ({run.audio_s:.1f} s analysed before the error)"
            log.warning("%s", exc)
        return self.end_source(run, self._feed(None))  # the last segment's tail window, every open event

    # The steps of run_source, for a caller that runs the model elsewhere (edge.service.parallel):
    def begin_source(self, source: AudioSource) -> SourceRun:
        """A source starts: the pipeline and the sinks are told; ``took`` and ``end_source`` follow."""
        self.source = source
        self.pipeline.begin(source.name, source.time_source)
        for sink in self.sinks:
            sink.begin_source(source.name)
        return SourceRun(source.name)

    def took(self, run: SourceRun, start: datetime, end: datetime, offset_s: float,
             dets: Sequence[Detection]) -> None:
        """Audio from ``start`` to ``end`` (``offset_s`` into the source at ``start``) went through the model and
        gave ``dets``: the listening session opened (or a new one after a model swap), the detections delivered."""
        source, bundle = self.source, self.pipeline.bundle
        assert source is not None, "begin_source first"
        key_offset = None if source.time_source == "clock" else offset_s  # sessions keyed as detection ids are
        self.sessions.ensure_open(start, source.name, bundle, offset_s=key_offset)
        run.audio_s = max(run.audio_s, offset_s + (end - start).total_seconds())
        self._last_end = end
        if dets or self._pending():
            self.deliver(dets, run)
        self.sessions.tick(start, end, source.name, bundle, offset_s=key_offset)

    def end_source(self, run: SourceRun, dets: Sequence[Detection]) -> SourceRun:
        """The source ended with ``dets`` (its last events): delivered, the sinks told, the session closed."""
        if dets or self._pending():
            self.deliver(dets, run)
        for sink in self.sinks:
            sink.end_source()
        if self._last_end is not None:
            self.sessions.close(self._last_end)
        return run

    def _feed(self, block: Optional[AudioBlock]) -> list[Detection]:
        """``block`` (None: the source's end) through the pipeline, with the health numbers."""
        p = self.pipeline
        w0, i0 = p.stats["windows"], p.stats["invoke_s"]
        dets = p.finish() if block is None else p.feed(block)
        n = int(p.stats["windows"] - w0)
        if n:
            self.health.note_windows(n, (p.stats["invoke_s"] - i0) / n)
        if block is not None:
            self.health.window_delay_s = p.delay_s  # a segment model scores windows in chunks
            self.health.note_audio(len(block.samples), p.sample_rate)
            self.health.note_level(block.samples)
            self.health.note_signal(p.guard)
            if self.source is not None:
                c = self.source.counters()
                self.health.overflows, self.health.dropped_frames = c.overflows, c.dropped_frames
                self.health.device_losses = c.device_losses
        return dets

    def _pending(self) -> bool:
        return self.guard is not None and bool(self.guard.pending)

    def deliver(self, dets: Sequence[Detection], run: Optional[SourceRun] = None) -> list[Detection]:
        """Store first, then the sinks (all of ``dets``) and the services (those stored now); returns the latter.

        Those stored now may include earlier ones that waited in the journal.
        """
        dets = list(dets)
        t0 = time.perf_counter()
        new = self.guard.insert(dets) if self.guard is not None else dets
        t1 = time.perf_counter()
        if dets:
            self.health.note_detections(dets)
            for d in dets:
                log.info("detected %s (%s) %s..%s score %.2f", d.common_name or d.label, d.label, d.start_utc,
                         d.end_utc, d.score)
            for sink in self.sinks:
                try:
                    sink.handle(dets)
                except Exception:
                    log.exception("%s failed to take the detections", type(sink).__name__)
        if new:
            for name, svc in self.services:
                try:
                    svc.handle(new)
                except Exception:
                    log.exception("service %s failed to take the detections", name)
        if run is not None:
            run.detections += dets
            run.new += len(new)
            run.store_s += t1 - t0
            run.output_s += time.perf_counter() - t1
        return new

    # -- effort --------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The listening session's settings: the source's own, then the pipeline's and the site's."""
        p, cfg = self.pipeline, self.cfg
        out = self.source.describe() if self.source is not None else {}
        out.update({
            "sample_rate": p.sample_rate, "window_s": p.params.window_s, "hop_s": p.hop_s,
            "model_name": p.bundle.name, "detection": cfg.detection.model_dump(mode="json"),
            "location": cfg.location.model_dump(mode="json"),
        })
        return out

    # -- stop ----------------------------------------------------------------------
    def stop(self, *, drain_s: float = 0.0) -> int:
        """Ordered stop: (drain the services,) the stop event, the session, the sinks, the services, the store.

        Returns how many detections are not in the store (kept in its journal for the next start, or lost).
        """
        if self._stopped:
            return self.unstored
        self._stopped = True
        if drain_s > 0:
            for _, svc in self.services:
                svc.drain(drain_s)
        self.stop_event.set()
        self.sessions.close(self._last_end or datetime.now(timezone.utc))
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("%s did not close cleanly", type(sink).__name__)
        for name, svc in reversed(self.services):
            try:
                svc.stop()
                log.info("service %s stopped", name)
            except Exception:
                log.exception("service %s did not stop cleanly", name)
        if self.guard is not None:
            self.unstored = self.guard.close()
        if self.store is not None:
            self.store.close()
        return self.unstored

    def unstored_summary(self) -> str:
        """One line naming the store and the journal when detections are outside the store; else empty."""
        return self.guard.summary() if self.guard is not None else ""
