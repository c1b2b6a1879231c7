"""The live daemon: configuration -> model -> microphone -> pipeline -> store (+ clips, + services).

``Daemon(cfg).run()`` wires the parts and owns the threads and the one stop
event. Start order: store, model (``edge.service.updates.resolve_startup``: active,
previous, configured, bundled default), pipeline, clips, the services
(``SERVICE_FACTORIES``: MQTT publisher, model updates...), the watchdog, and
last the microphone. The processing loop runs on the calling thread:
blocks from the source -> pipeline -> sinks (store first, then clips and the
services that take detections). READY=1 goes to systemd once the model is
loaded and the first audio block has been processed.

SIGTERM/SIGINT set the stop event; the source then closes the stream and
drains the ring buffer, the pipeline finishes its open events, the sinks
take them, the effort row is closed, the services stop in reverse order and
the store is closed.

Effort: a row per listening session (device, capture rate, model, settings)
opened when the device opens and closed when it closes (its end time is
also refreshed every ``status_interval_s``, so a crash leaves it at most that
stale); a new row when the model changes (its version or its bytes: a new
version with the same network, e.g. new thresholds, is a new session too).
Gaps (device loss, overflows) go to the ``gaps`` table as the source
reports them.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Optional

from edge.config import Config
from edge.service.health import Health
from edge.service.sdnotify import Notifier, Watchdog
from edge.contract.record import Detection, format_utc
from edge.types import AudioBlock, DetectionSink, Service

if TYPE_CHECKING:  # loaded where used: the daemon starts in about a second
    from edge.detection.pipeline import Pipeline
    from edge.outputs.store import Store
    from edge.service.modelstore import ModelStore
    from edge.service.updates import Running

log = logging.getLogger(__name__)


@dataclass
class DaemonContext:
    """What a service factory gets: everything already wired, nothing started."""

    cfg: Config
    stop: threading.Event
    health: Health
    store: Store
    pipeline: Pipeline  # set_model is thread-safe
    running: Running  # the model in use
    model_store: ModelStore  # installed model bundles (not the detection store)
    services: dict[str, Service] = field(default_factory=dict)  # name -> service started before this one


#: ``factory(ctx) -> Service or None``: started in this order, stopped in
#: reverse; each receives every batch of detections after the store committed it.
ServiceFactory = Callable[[DaemonContext], Optional[Service]]


def mqtt_service(ctx: DaemonContext):
    if not ctx.cfg.mqtt.enabled:
        return None
    from edge.outputs.mqtt.publisher import Publisher
    from edge.outputs.store import Store

    path = ctx.cfg.store.path
    return Publisher.from_config(ctx.cfg, lambda: Store(path), health=ctx.health, stop=ctx.stop)


def updates_service(ctx: DaemonContext):
    # Always made, even without MQTT: it also clears the crash-loop counter once a swapped-in
    # model is healthy and records clean stops (which are not crashes). It subscribes to the
    # model topics only with MQTT on and updates.enabled.
    pub = ctx.services.get("mqtt")
    from edge.service.updates import UpdateService

    return UpdateService(ctx.cfg, ctx.model_store, ctx.running, ctx.pipeline, publisher=pub,
                         topics=getattr(pub, "topics", None), stop_event=ctx.stop,
                         progress=lambda: ctx.health.windows)


def retention_service(ctx: DaemonContext):
    from edge.outputs.retention import service_factory

    return service_factory(ctx)


def alerts_service(ctx: DaemonContext):
    from edge.service.alerts import service_factory

    return service_factory(ctx)


def health_file_service(ctx: DaemonContext):
    from edge.service.healthfile import service_factory

    return service_factory(ctx)


def web_service(ctx: DaemonContext):
    from edge.outputs.web.service import service_factory

    return service_factory(ctx)


SERVICE_FACTORIES: list[tuple[str, ServiceFactory]] = [
    ("mqtt", mqtt_service),
    ("updates", updates_service),
    ("retention", retention_service),
    ("alerts", alerts_service),
    ("health_file", health_file_service),
    ("web", web_service),
]


class _Capture:
    """The source's listener: effort rows, gaps, health."""

    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    def opened(self, info, at):
        self.d.health.note_device(info.name, info.capture_rate)
        self.d.device_info = info
        self.d.open_effort(at)

    def closed(self, info, at, reason):
        self.d.close_effort(at)
        log.info("stopped listening on %r (%s)", info.name, reason)

    def gap(self, start, end, reason, lost_frames):
        secs = (end - start).total_seconds()
        self.d.health.note_gap(secs)
        log.warning("gap in the audio: %.1f s from %s (%s)", secs, format_utc(start), reason)
        try:
            self.d.store.add_gap(device_id=self.d.cfg.device_id, source=self.d.source_name, start_utc=format_utc(start),
                                 end_utc=format_utc(end), reason=reason, samples_lost=lost_frames)
        except Exception as exc:  # a full disk must not stop the capture
            log.error("cannot record the gap: %s", exc)

    def audio(self, frames):
        pass

    def waiting(self, reason):
        self.d.health.note_waiting()


class Daemon:
    def __init__(self, cfg: Config, *, duration_s: float | None = None, notifier: Notifier | None = None,
                 service_factories: list[tuple[str, ServiceFactory]] | None = None):
        self.cfg = cfg
        self.duration_s = duration_s
        self.stop_event = threading.Event()
        self.health = Health(cfg.device_id, cfg.state_dir)
        self.notifier = notifier or Notifier()
        self.factories = SERVICE_FACTORIES if service_factories is None else service_factories
        self.services: list[tuple[str, Service]] = []
        self.sinks: list[DetectionSink] = []  # after the store: clips
        self.store = None
        self.pipeline = None
        self.running = None
        self.clips = None
        self.source = None
        self.device_info = None
        self.effort_id: str | None = None
        self._effort_model = None
        self.unstored = 0  # detections not in the store at the stop (journal or lost): a non-zero exit
        self.ready = False
        self.source_name = str(cfg.audio.device) if cfg.audio.device is not None else "default"

    # -- signals -----------------------------------------------------------------
    def install_signals(self) -> None:
        def on_signal(signum, _frame):
            if self.stop_event.is_set():
                log.info("%s again: already stopping", signal.Signals(signum).name)
                return
            log.info("%s: stopping", signal.Signals(signum).name)
            self.health.state = "stopping"
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- start-up ----------------------------------------------------------------
    def setup(self) -> None:
        from edge.service.modelstore import ModelStore
        from edge.detection.pipeline import Pipeline
        from edge.sources.mic import MicSource
        from edge.outputs.store import Store
        from edge.service.updates import models_dir_for, resolve_startup

        cfg = self.cfg
        self.store = Store(cfg.store.path)
        from edge.outputs.journal import StoreGuard

        self.guard = StoreGuard(self.store)  # what the store cannot take waits in <store>.journal
        self.model_store = ModelStore(models_dir_for(cfg))
        self.running = resolve_startup(cfg, self.model_store)
        bundle = self.running.bundle
        self.health.note_model(bundle.version, bundle.sha256)
        self.pipeline = Pipeline(bundle, self.running.model, detection=cfg.detection, overlap_s=cfg.model.overlap_s,
                                 device_id=cfg.device_id)
        if cfg.clips.enabled or cfg.web.enabled:  # the dashboard plays and draws the clips
            from edge.outputs.clips import ClipWriter

            self.clips = ClipWriter(cfg.clips.dir, self.pipeline.sample_rate, padding_s=cfg.clips.padding_s,
                                    max_disk_mb=cfg.clips.max_disk_mb, min_free_mb=cfg.store.reserve_mb)
            self.sinks.append(self.clips)
        ctx = DaemonContext(cfg, self.stop_event, self.health, self.store, self.pipeline, self.running,
                            self.model_store)
        for name, factory in self.factories:
            svc = factory(ctx)
            if svc is None:
                continue
            svc.start()
            self.services.append((name, svc))
            ctx.services[name] = svc
            log.info("service %s started", name)
        from edge.service.clock import anchor_after_store, stream_clock

        self.clock = stream_clock()  # live times: the wall clock read once, then monotonic; steps recorded as such
        anchor_after_store(self.clock, self.store, cfg.device_id, self.source_name)
        self.source = MicSource(cfg.audio, self.pipeline.sample_rate, _Capture(self), max_seconds=self.duration_s,
                                clock=self.clock)
        grace = 4 * max(cfg.audio.block_s, self.pipeline.hop_s, 0.5)  # no audio or window for this long: stalled
        self.watchdog = Watchdog(self.notifier, self.health.progressing, self.health.summary, self.stop_event,
                                 status_s=cfg.status_interval_s, grace_s=grace)
        self.watchdog.start()

    # -- effort ------------------------------------------------------------------
    def settings(self) -> dict:
        info = self.device_info
        p = self.pipeline
        return {
            "device": info.name if info else self.source_name, "device_index": info.index if info else None,
            "hostapi": info.hostapi if info else None, "capture_rate": info.capture_rate if info else None,
            "sample_rate": p.sample_rate, "resampled": bool(info and info.resampled),
            "channels": self.cfg.audio.channels, "channel": self.cfg.audio.channel, "gain_db": self.cfg.audio.gain_db,
            "window_s": p.params.window_s, "hop_s": p.hop_s, "model_name": p.bundle.name,
            "detection": self.cfg.detection.model_dump(mode="json"),
            "location": self.cfg.location.model_dump(mode="json"),
        }

    def open_effort(self, at: datetime) -> None:
        b = self.pipeline.bundle
        self.effort_id = str(uuid.uuid4())
        self._effort_model = (b.version, b.sha256)
        self._effort_touched = time.monotonic()
        try:
            self.store.open_effort(id=self.effort_id, device_id=self.cfg.device_id, source=self.source_name,
                                   start_utc=format_utc(at), model_version=b.version, model_sha256=b.sha256,
                                   settings=self.settings())
        except Exception as exc:
            log.error("cannot record the listening session: %s", exc)

    def _now(self) -> datetime:
        from edge.service.clock import utc

        return utc(self.clock.now()) if getattr(self, "clock", None) is not None else datetime.now(timezone.utc)

    def close_effort(self, at: datetime | None = None) -> None:
        if self.effort_id is None:
            return
        try:
            self.store.close_effort(self.effort_id, format_utc(at or self._now()))
        except Exception as exc:
            log.error("cannot close the listening session: %s", exc)
        self.effort_id = None

    def _effort_tick(self) -> None:
        if self.effort_id is None:
            return
        b = self.pipeline.bundle
        if (b.version, b.sha256) != self._effort_model:  # a model update: a new session
            now = self._now()
            self.close_effort(now)
            self.open_effort(now)
            self.health.note_model(b.version, b.sha256)
        elif time.monotonic() - self._effort_touched > self.cfg.status_interval_s:
            self._effort_touched = time.monotonic()
            try:
                self.store.close_effort(self.effort_id, format_utc(self._now()))
            except Exception as exc:
                log.error("cannot update the listening session: %s", exc)

    # -- the loop ----------------------------------------------------------------
    def _emit(self, dets: list[Detection]) -> None:
        dets = self.guard.insert(dets)  # those stored now (with any that waited in the journal)
        if not dets:
            return
        self.health.note_detections(dets)
        for d in dets:
            log.info("detected %s (%s) %s..%s score %.2f", d.common_name or d.label, d.label, d.start_utc,
                     d.end_utc, d.score)
        for name, sink in [(type(s).__name__, s) for s in self.sinks] + self.services:
            try:
                sink.handle(dets)
            except Exception:
                log.exception("%s failed to take the detections", name)

    def _account(self, block: AudioBlock, windows0: int, invoke0: float) -> None:
        st = self.pipeline.stats
        n = st["windows"] - windows0
        if n:
            self.health.note_windows(n, (st["invoke_s"] - invoke0) / n)
        self.health.note_audio(len(block.samples), self.pipeline.sample_rate)
        self.health.note_signal(self.pipeline.guard)
        src = self.source
        self.health.overflows = src.live_overflows
        self.health.dropped_frames = src.live_dropped_frames
        self.health.device_losses = src.device_losses

    def loop(self) -> None:
        p = self.pipeline
        p.begin(self.source_name, self.source.time_source)
        for block in self.source.blocks(self.stop_event):
            if (step := self.clock.check()) is not None:  # an NTP step: logged and recorded, times unmoved
                from edge.service.clock import record_step

                record_step(step, self.clock.now(), self.store, self.cfg.device_id, self.source_name)
            st = p.stats
            w0, i0 = st["windows"], st["invoke_s"]
            dets = p.feed(block)
            self._account(block, w0, i0)
            if self.clips is not None:
                self.clips.add_audio(block)
            if dets or self.guard.pending:
                self._emit(dets)
            if not self.ready:
                self.ready = True
                self.notifier.ready(self.health.summary())
                log.info("ready: audio flowing, model %s %s loaded", p.bundle.name, p.bundle.version)
            self._effort_tick()
        w0, i0 = p.stats["windows"], p.stats["invoke_s"]
        dets = p.finish()  # the last segment's tail window
        if p.stats["windows"] > w0:
            self.health.note_windows(p.stats["windows"] - w0, (p.stats["invoke_s"] - i0) / (p.stats["windows"] - w0))
        if dets or self.guard.pending:
            self._emit(dets)

    # -- shutdown ----------------------------------------------------------------
    def shutdown(self) -> None:
        self.stop_event.set()
        self.health.state = "stopping"
        self.notifier.stopping(self.health.summary())
        self.close_effort()
        if self.clips is not None:
            self.clips.flush()
        for name, svc in reversed(self.services):
            try:
                svc.stop()
                log.info("service %s stopped", name)
            except Exception:
                log.exception("service %s did not stop cleanly", name)
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()
        if getattr(self, "guard", None) is not None:
            self.unstored = self.guard.close()
        if self.store is not None:
            self.store.close()
        self.notifier.close()
        h = self.health
        log.info("stopped after %.0f s: %d windows, %d detections, %d overflows, %d gaps, %d samples (%.1f s) of audio",
                 h.uptime_s(), h.windows, h.detections, h.overflows, h.gaps, h.audio_frames, h.audio_s)

    def run(self) -> int:
        """Set up, process until stopped (or the duration is captured), shut down in order."""
        try:
            self.setup()
            self.loop()
        finally:
            self.shutdown()
        if self.unstored:
            from edge.outputs.journal import EXIT_UNSTORED

            log.error("%s", self.guard.summary())
            return EXIT_UNSTORED
        return 0

    def status_json(self) -> str:
        return json.dumps(self.health.snapshot())
