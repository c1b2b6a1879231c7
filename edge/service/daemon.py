"""The live daemon: the runtime (``edge.service.runtime``) with the microphone, systemd and signals.

``Daemon(cfg).run()`` assembles: store, model (``edge.service.updates.resolve_startup``:
active, previous, configured, bundled default), pipeline, clips, the runtime
and its services (``SERVICE_FACTORIES``: MQTT publisher, model updates...),
the watchdog, and last the microphone. The processing loop
(``Runtime.run_source``) runs on the calling thread. READY=1 goes to systemd
once the model is loaded and the first audio block has been processed.

SIGTERM/SIGINT set the one stop event; the source then closes the stream and
drains the ring buffer, the pipeline finishes its open events, the store and
the sinks take them, and ``Runtime.stop`` closes the session, the sinks, the
services (in reverse order) and the store.

Listening sessions (``edge.service.sessions``) open when the device opens
and close when it closes; gaps (device loss, overflows) go to the ``gaps``
table as the source reports them (``CaptureEvents``).
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Optional

from edge.config import Config
from edge.contract.record import format_utc
from edge.service.health import Health
from edge.service.runtime import SERVICE_FACTORIES, Runtime, ServiceFactory
from edge.service.sdnotify import Notifier, Watchdog
from edge.types import AudioBlock, DetectionSink

from edge.sources.mic import CaptureListener

if TYPE_CHECKING:
    from edge.clock import StreamClock
    from edge.sources.mic import DeviceInfo, MicSource

log = logging.getLogger(__name__)


class CaptureEvents(CaptureListener):
    """What the microphone reports: sessions, gaps, health."""

    def __init__(self, runtime: Runtime, source_name: str):
        self.rt = runtime
        self.source_name = source_name

    def opened(self, info: DeviceInfo, at: datetime) -> None:
        self.rt.health.note_device(info.name, info.capture_rate)
        self.rt.sessions.open(at, self.source_name, self.rt.pipeline.bundle)

    def closed(self, info: DeviceInfo, at: datetime, reason: str) -> None:
        self.rt.sessions.close(at)
        log.info("stopped listening on %r (%s)", info.name, reason)

    def gap(self, start: datetime, end: datetime, reason: str, lost_frames: int) -> None:
        secs = (end - start).total_seconds()
        self.rt.health.note_gap(secs)
        log.warning("gap in the audio: %.1f s from %s (%s)", secs, format_utc(start), reason)
        if self.rt.store is None:
            return
        try:
            self.rt.store.add_gap(device_id=self.rt.cfg.device_id, source=self.source_name,
                                  start_utc=format_utc(start), end_utc=format_utc(end), reason=reason,
                                  samples_lost=lost_frames)
        except Exception as exc:  # a full disk must not stop the capture
            log.error("cannot record the gap: %s", exc)

    def audio(self, frames: int) -> None:
        pass

    def waiting(self, reason: str) -> None:
        self.rt.health.note_waiting()


class Daemon:
    def __init__(self, cfg: Config, *, duration_s: float | None = None, notifier: Notifier | None = None,
                 service_factories: list[tuple[str, ServiceFactory]] | None = None):
        self.cfg = cfg
        self.duration_s = duration_s
        self.stop_event = threading.Event()
        self.health = Health(cfg.device_id, cfg.state_dir)
        self.notifier = notifier or Notifier()
        self.factories = SERVICE_FACTORIES if service_factories is None else service_factories
        self.runtime: Optional[Runtime] = None
        self.source: Optional[MicSource] = None
        self.watchdog: Optional[Watchdog] = None
        self.clock: Optional[StreamClock] = None
        self.ready = False
        self.source_name = str(cfg.audio.device) if cfg.audio.device is not None else "default"

    # -- signals -----------------------------------------------------------------
    def install_signals(self) -> None:
        def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
            if self.stop_event.is_set():
                log.info("%s again: already stopping", signal.Signals(signum).name)
                return
            log.info("%s: stopping", signal.Signals(signum).name)
            self.health.state = "stopping"
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- start-up ----------------------------------------------------------------
    def setup(self) -> Runtime:
        from edge.detection.pipeline import Pipeline
        from edge.outputs.store import Store
        from edge.service.modelstore import ModelStore
        from edge.service.updates import models_dir_for, resolve_startup
        from edge.sources.mic import MicSource

        cfg = self.cfg
        store = Store(cfg.store.path)
        try:
            model_store = ModelStore(models_dir_for(cfg))
            running = resolve_startup(cfg, model_store)
            pipeline = Pipeline(running.bundle, running.model, detection=cfg.detection,
                                overlap_s=cfg.model.overlap_s, device_id=cfg.device_id)
        except BaseException:
            store.close()
            raise
        sinks: list[DetectionSink] = []
        if cfg.clips.enabled or cfg.web.enabled:  # the dashboard plays and draws the clips
            from edge.outputs.clips import ClipWriter

            clips = ClipWriter.from_config(cfg, pipeline.sample_rate, delay_s=lambda: pipeline.delay_s)
            if clips is not None:
                sinks.append(clips)
        rt = self.runtime = Runtime(cfg, pipeline, store, health=self.health, stop=self.stop_event, sinks=sinks,
                                    running=running, model_store=model_store)
        rt.start_services(self.factories)
        from edge.clock import anchor_after_store, stream_clock

        self.clock = stream_clock()  # live times: the wall clock read once, then monotonic; steps recorded as such
        anchor_after_store(self.clock, store, cfg.device_id, self.source_name)
        self.source = MicSource(cfg.audio, pipeline.sample_rate, CaptureEvents(rt, self.source_name),
                                max_seconds=self.duration_s, clock=self.clock)
        grace = 4 * max(cfg.audio.block_s, pipeline.hop_s, 0.5)  # no audio or window for this long: stalled
        self.watchdog = Watchdog(self.notifier, self.health.progressing, self.health.summary, self.stop_event,
                                 status_s=cfg.status_interval_s, grace_s=grace)
        self.watchdog.start()
        return rt

    def _on_block(self, block: AudioBlock) -> None:
        """After each block: a wall-clock step is logged and recorded (times stay on the stream's timeline);
        the first one tells systemd the daemon is ready."""
        rt = self.runtime
        if self.clock is not None and rt is not None and rt.store is not None \
                and (step := self.clock.check()) is not None:
            from edge.clock import record_step

            record_step(step, self.clock.now(), rt.store, self.cfg.device_id, self.source_name)
        if not self.ready:
            self.ready = True
            self.notifier.ready(self.health.summary())
            b = self.runtime.pipeline.bundle if self.runtime else None
            log.info("ready: audio flowing, model %s %s loaded", b and b.name, b and b.version)

    # -- shutdown ----------------------------------------------------------------
    def shutdown(self) -> int:
        """Stop in order; returns how many detections are not in the store."""
        self.stop_event.set()
        self.health.state = "stopping"
        self.notifier.stopping(self.health.summary())
        unstored = self.runtime.stop() if self.runtime is not None else 0
        if self.watchdog is not None:
            self.watchdog.stop()
        self.notifier.close()
        h = self.health
        log.info("stopped after %.0f s: %d windows, %d detections, %d overflows, %d gaps, %d samples (%.1f s) of audio",
                 h.uptime_s(), h.windows, h.detections, h.overflows, h.gaps, h.audio_frames, h.audio_s)
        return unstored

    def run(self) -> int:
        """Set up, process until stopped (or the duration is captured), shut down in order.

        0, or ``EXIT_UNSTORED`` when detections are left outside the store (in its journal, or lost).
        """
        try:
            rt = self.setup()
            assert self.source is not None
            rt.run_source(self.source, on_block=self._on_block)
        finally:
            unstored = self.shutdown()
        if unstored and self.runtime is not None:
            from edge.outputs.journal import EXIT_UNSTORED

            log.error("%s", self.runtime.unstored_summary())
            return EXIT_UNSTORED
        return 0

    def status_json(self) -> str:
        return json.dumps(self.health.snapshot())
