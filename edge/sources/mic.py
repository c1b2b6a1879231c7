"""The microphone as an AudioSource: a sounddevice input stream into a ring buffer.

The PortAudio callback only copies into a preallocated ``RingBuffer`` (and
counts overflows); the processing thread, inside ``blocks()``, reads from
the ring, picks or mixes channels, applies the gain, resamples to the
pipeline's rate and yields ``AudioBlock``s.

The device is chosen by index or by part of its name. The source asks it
for the pipeline's rate; where the device cannot, it captures at the
device's default rate and resamples.

Losing the device (USB microphone unplugged, ALSA error, a stream that
stops delivering) does not end the source: it closes the stream, re-scans
the devices and retries with exponential backoff, and when audio returns the
next block carries ``discontinuity=True``. Every gap (device loss, ring
overflow, driver overflow) is reported to the ``CaptureListener`` with its
times; nothing is stitched over silently.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np

from edge.sources.ringbuffer import RingBuffer
from edge.types import AudioBlock, AudioSource, SourceCounters
from edge.contract.resample import StreamResampler

log = logging.getLogger(__name__)

#: Capture format. 16-bit is what USB and I2S microphones deliver natively (96 dB of
#: range, ample for detection) and halves the ring buffer; asking PortAudio for float
#: makes ALSA insert a conversion plugin, which also misbehaves with ALSA's file device.
DTYPE = "int16"
MAX_DRIFT_S = 1.0  # block times count samples; re-anchored to the stream clock (monotonic, not NTP-stepped) past this


class DeviceLost(RuntimeError):
    """The open stream stopped delivering audio."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    index: int
    hostapi: str
    capture_rate: int
    channels: int
    target_rate: int

    @property
    def resampled(self) -> bool:
        return self.capture_rate != self.target_rate

    def describe(self) -> str:
        rs = f", resampled to {self.target_rate} Hz" if self.resampled else ""
        return f"{self.name!r} (#{self.index}, {self.hostapi}) at {self.capture_rate} Hz x{self.channels}{rs}"


class CaptureListener:
    """What the source tells the daemon; the default does nothing."""

    def opened(self, info: DeviceInfo, at: datetime) -> None:
        pass

    def closed(self, info: DeviceInfo, at: datetime, reason: str) -> None:
        pass

    def gap(self, start: datetime, end: datetime, reason: str, lost_frames: int) -> None:
        pass

    def audio(self, frames: int) -> None:
        """Called for every block yielded (progress, for health and the watchdog)."""

    def waiting(self, reason: str) -> None:
        """Called at least once a second while the device is missing and being retried."""


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def _sounddevice():
    import sounddevice as sd  # PortAudio initialises here: ALSA_CONFIG_PATH must already be set

    return sd


def list_input_devices() -> list[dict]:
    """Input devices as dicts: index, name, hostapi, channels, default_rate."""
    sd = _sounddevice()
    apis = sd.query_hostapis()
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] > 0:
            out.append({
                "index": d["index"], "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                "channels": d["max_input_channels"], "default_rate": int(d["default_samplerate"]),
            })
    return out


def supported_rates(index: int, channels: int, rates=(8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)) -> list[int]:
    sd = _sounddevice()
    ok = []
    for r in rates:
        try:
            sd.check_input_settings(device=index, channels=channels, dtype=DTYPE, samplerate=r)
            ok.append(r)
        except Exception:  # PortAudioError or ValueError: not supported
            pass
    return ok


class MicSource(AudioSource):
    """Live audio from a sound device, as mono float32 at ``sample_rate``."""

    time_source = "clock"

    def __init__(self, audio_cfg, sample_rate: int, listener: CaptureListener | None = None,
                 max_seconds: float | None = None, clock=None):
        from edge.clock import stream_clock

        self.cfg = audio_cfg
        self.clock = clock or stream_clock()  # block times: anchored once, monotonic after (NTP steps do not show)
        self.sample_rate = int(sample_rate)
        self.listener = listener or CaptureListener()
        self.max_seconds = max_seconds  # stop after this much captured audio (surveys, tests, benches)
        self.name = str(audio_cfg.device) if audio_cfg.device is not None else "default"
        self.gain = float(10 ** (audio_cfg.gain_db / 20))
        self.info: DeviceInfo | None = None
        # totals over every stream this source opened (read by health)
        self.overflows = 0
        self.driver_overflows = 0
        self.dropped_frames = 0
        self.device_losses = 0
        self.frames_emitted = 0
        self.reanchors = 0
        self._ring: RingBuffer | None = None
        self._finished = threading.Event()
        self._limit_reached = False
        self._captured = 0  # frames the device delivered (callback side)
        self._limit: int | None = None
        self._scanned = False

    # -- the callback: copy, count, nothing else ---------------------------------
    def _callback(self, indata, frames, time_info, status) -> None:
        if self._limit_reached:
            raise _sounddevice().CallbackStop
        limit = self._limit
        if limit is not None:
            room = limit - self._captured
            if room < frames:
                indata = indata[:max(room, 0)]
                frames = len(indata)
        ring = self._ring
        if ring is None:  # the stream is closing
            return
        ring.write(indata, status.input_overflow)
        self._captured += frames
        if limit is not None and self._captured >= limit:
            self._limit_reached = True
            raise _sounddevice().CallbackStop

    def _on_finished(self) -> None:
        self._finished.set()

    # -- opening -----------------------------------------------------------------
    def _open(self):
        sd = _sounddevice()
        if self._scanned:  # re-scan: an unplugged device gets a new index when it returns
            sd._terminate()
            sd._initialize()
        self._scanned = True
        cfg = self.cfg
        dev = sd.query_devices(cfg.device, "input")
        if dev["max_input_channels"] < cfg.channels:
            raise ValueError(f"device {dev['name']!r} has {dev['max_input_channels']} input channel(s); "
                             f"audio.channels is {cfg.channels}")
        index = int(dev["index"])
        rate = int(cfg.sample_rate or self.sample_rate)
        try:
            sd.check_input_settings(device=index, channels=cfg.channels, dtype=DTYPE, samplerate=rate)
        except Exception:
            if cfg.sample_rate is not None:
                raise
            rate = int(dev["default_samplerate"])
            sd.check_input_settings(device=index, channels=cfg.channels, dtype=DTYPE, samplerate=rate)
        ring = RingBuffer(int(math.ceil(cfg.ring_buffer_s * rate)), cfg.channels, rate, dtype=np.int16,
                          clock=self.clock.now)
        self._ring = ring
        self._finished.clear()
        if self.max_seconds is not None:
            self._limit = int(round(self.max_seconds * rate))
        stream = sd.InputStream(
            device=index, samplerate=rate, channels=cfg.channels, dtype=DTYPE,
            blocksize=max(1, int(round(cfg.block_s * rate))), callback=self._callback,
            finished_callback=self._on_finished,
        )
        try:
            stream.start()
        except Exception:
            stream.close()
            raise
        info = DeviceInfo(dev["name"], index, sd.query_hostapis(dev["hostapi"])["name"], rate, cfg.channels, self.sample_rate)
        return stream, ring, info

    @staticmethod
    def _close(stream) -> None:
        try:
            stream.abort()
        except Exception as exc:  # a vanished device may refuse even this
            log.debug("abort: %s", exc)
        try:
            stream.close()
        except Exception as exc:
            log.debug("close: %s", exc)

    # -- reading -----------------------------------------------------------------
    def _chunks(self, stream, ring: RingBuffer, stop: threading.Event):
        """Chunks from the ring until stop (then drain), the frame limit, or device loss."""
        max_frames = max(1, int(round(self.cfg.block_s * ring.rate)))
        stall_s = max(5.0, 4 * self.cfg.block_s)
        last = time.monotonic()
        while True:
            if stop.is_set():
                self._close(stream)
                while (chunk := ring.read(max_frames)) is not None:
                    yield chunk
                return
            chunk = ring.read(max_frames)
            if chunk is not None:
                last = time.monotonic()
                yield chunk
                continue
            if self._finished.is_set():
                if self._limit_reached:
                    return
                raise DeviceLost("the stream stopped")
            if time.monotonic() - last > stall_s:
                raise DeviceLost(f"no audio for {stall_s:.0f} s")
            ring.wait(min(0.25, self.cfg.block_s))

    def _mono(self, data: np.ndarray) -> np.ndarray:
        """int16 frames -> mono float32 in [-1, 1), gain applied."""
        if data.shape[1] == 1:
            x = data[:, 0].astype(np.float32)
        elif self.cfg.channel is not None:
            x = data[:, self.cfg.channel].astype(np.float32)
        else:
            x = data.mean(axis=1, dtype=np.float32)
        x *= np.float32(self.gain / 32768.0)
        return x

    def blocks(self, stop: threading.Event) -> Iterator[AudioBlock]:
        backoff = self.cfg.retry_initial_s
        lost_since: float | None = None  # wall time audio stopped (device loss), until it returns
        lost_reason = ""
        failures = 0
        while not stop.is_set():
            try:
                stream, ring, info = self._open()
            except Exception as exc:
                failures += 1
                if lost_since is None:
                    lost_since, lost_reason = self.clock.now(), f"device unavailable: {exc}"
                if failures == 1 or failures % 10 == 0:
                    log.warning("audio device %s unavailable (%s); retrying in %.1f s (attempt %d)",
                                self.name, exc, backoff, failures)
                deadline = time.monotonic() + backoff
                while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                    self.listener.waiting(lost_reason)
                    stop.wait(min(1.0, left))
                backoff = min(backoff * 2, self.cfg.retry_max_s)
                continue
            failures, backoff, self.info = 0, self.cfg.retry_initial_s, info
            log.info("listening on %s", info.describe())
            self.listener.opened(info, _utc(self.clock.now()))
            pending_gap = lost_since  # reported once the first frame's time is known
            try:
                yield from self._segment(stream, ring, info, stop, pending_gap, lost_reason)
                lost_since = None
            except DeviceLost as exc:
                self.device_losses += 1
                lost_since, lost_reason = self.clock.now(), f"device lost: {exc}"
                log.warning("audio device %s lost (%s); reopening", info.name, exc)
            finally:
                self._close(stream)
                self._trailing_gap(ring, info)
                self._collect(ring)
                self._ring = None
                self.listener.closed(info, _utc(self.clock.now()), lost_reason if lost_since else "stopped")
            if self._limit_reached:
                break

    def _segment(self, stream, ring, info: DeviceInfo, stop, pending_gap, gap_reason) -> Iterator[AudioBlock]:
        resampler = StreamResampler(info.capture_rate, info.target_rate) if info.resampled else None
        seg_in = seg_out = 0  # input frames read / output samples emitted since the segment began
        anchor = None  # (wall time, seg_out) that block times count from
        disc = pending_gap is not None
        for chunk in self._chunks(stream, ring, stop):
            if pending_gap is not None:
                end = max(chunk.start_time, pending_gap)  # a clockless device can "start" before it was found
                self.listener.gap(_utc(pending_gap), _utc(end), gap_reason, int((end - pending_gap) * info.target_rate))
                pending_gap = None
            if chunk.lost_before is not None:  # overflow: start a new segment, never stitch
                end = chunk.start_time
                self._overflow_gap(end - chunk.lost_before / info.capture_rate, chunk.lost_before, info)
                resampler = StreamResampler(info.capture_rate, info.target_rate) if info.resampled else None
                seg_in = seg_out = 0
                anchor = None
                disc = True
            x = self._mono(chunk.data)
            # time of the first output sample: its input position relative to this chunk,
            # by sample count from an anchor, re-anchored when the device clock drifts > 1 s
            t_clock = chunk.start_time + ((seg_out * info.capture_rate / info.target_rate) - seg_in) / info.capture_rate
            if anchor is None:
                anchor = (t_clock, seg_out)
            t0 = anchor[0] + (seg_out - anchor[1]) / info.target_rate
            if abs(t_clock - t0) > MAX_DRIFT_S:
                self.reanchors += 1
                log.debug("device clock drifted %.2f s from the system clock; re-anchored", t0 - t_clock)
                anchor, t0 = (t_clock, seg_out), t_clock
            seg_in += len(x)
            if resampler is not None:
                x = resampler.process(x)
            if not len(x):
                continue
            offset = self.frames_emitted / self.sample_rate
            seg_out += len(x)
            self.frames_emitted += len(x)
            self.listener.audio(len(x))
            yield AudioBlock(x, _utc(t0), offset, disc)
            disc = False

    def _overflow_gap(self, start: float, lost: int, info: DeviceInfo) -> None:
        end = start + lost / info.capture_rate
        why = "ring buffer overflow" if lost else "driver overflow"
        log.warning("%s: %d frames lost from %s, after stream sample %d", why, lost, _utc(start).isoformat(),
                    self.frames_emitted)
        self.listener.gap(_utc(start), _utc(end), why, lost)

    def _trailing_gap(self, ring: RingBuffer, info: DeviceInfo) -> None:
        """An overflow at the end of the stream (the ring was full when it stopped) is a gap too."""
        loss = ring.take_trailing_loss()
        if loss is not None:
            self._overflow_gap(loss[0], loss[1], info)

    def _collect(self, ring: RingBuffer) -> None:
        self.overflows += ring.overflows
        self.driver_overflows += ring.driver_overflows
        self.dropped_frames += ring.dropped_frames

    def describe(self) -> dict[str, Any]:
        info, a = self.info, self.cfg
        return {"device": info.name if info else self.name, "device_index": info.index if info else None,
                "hostapi": info.hostapi if info else None, "capture_rate": info.capture_rate if info else None,
                "resampled": bool(info and info.resampled), "channels": a.channels, "channel": a.channel,
                "gain_db": a.gain_db}

    def counters(self) -> SourceCounters:
        return SourceCounters(self.live_overflows, self.live_dropped_frames, self.device_losses)

    @property
    def live_overflows(self) -> int:
        """Overflows so far, the open stream's included."""
        ring = self._ring
        return self.overflows + self.driver_overflows + ((ring.overflows + ring.driver_overflows) if ring else 0)

    @property
    def live_dropped_frames(self) -> int:
        ring = self._ring
        return self.dropped_frames + (ring.dropped_frames if ring else 0)

    def close(self) -> None:
        pass
