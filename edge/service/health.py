"""The daemon's health numbers, kept current for status messages and the watchdog.

One ``Health`` object per daemon. The capture and processing threads update
it (``note_audio``, ``note_windows``, ``note_gap``, ...); anyone may read
``snapshot()`` (a plain dict, the field names the MQTT status message uses)
or ``summary()`` (the one-line systemd STATUS). Updates are single
attribute stores (atomic under the GIL); readers may see numbers a block
apart, never torn ones.

``progressing()`` is the watchdog's question: have audio and inference both
moved within the grace period? A segment model (``edge.detection.segments``)
scores its windows in chunks, up to ``window_delay_s`` later than a window
model: inference counts as moving that much longer. A device that is gone while the source is
alive in its retry loop is a known, recorded state (the loop keeps
``note_waiting`` fresh), not a hang: the watchdog keeps the daemon alive so
it can resume when the device returns.
"""
from __future__ import annotations

import math
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from edge.contract.record import format_utc


class Health:
    def __init__(self, device_id: str = "recorder", disk_path: str | Path = "/", clock=time.monotonic):
        self._clock = clock
        self.device_id = device_id
        self.disk_path = Path(disk_path)
        self.started_monotonic = clock()
        self.started_utc = datetime.now(timezone.utc)
        self.state = "starting"  # starting, listening, waiting-for-device, stopping
        self.device = ""
        self.capture_rate = 0
        self.model_version = ""
        self.model_sha256 = ""
        self.audio_frames = 0
        self.audio_s = 0.0
        self.windows = 0
        self.detections = 0
        self.gaps = 0
        self.gap_s = 0.0
        self.device_losses = 0
        self.overflows = 0  # updated from the source's counters
        self.dropped_frames = 0
        self.no_signal_windows = 0  # windows refused by the signal guard (silence, constant, non-finite)
        self.no_signal_streak = 0  # ... consecutive, now: > 0 is the dead-microphone alarm
        self.latency_ms = 0.0  # inference latency per window, moving average
        self.latency_max_ms = 0.0
        self.last_detection: dict | None = None
        self.last_audio = 0.0
        self.last_window = 0.0
        self.window_delay_s = 0.0  # the pipeline's: windows may be scored this much later (segment models)
        self.last_waiting = 0.0
        self.audio_level_dbfs: float | None = None  # RMS of the newest block; -120: digital silence
        self.last_audio_wall: datetime | None = None
        self._lock = threading.Lock()  # only for the few multi-field updates

    # -- writers -----------------------------------------------------------------
    def note_audio(self, frames: int, rate: int) -> None:
        self.audio_frames += frames
        self.audio_s += frames / rate
        self.last_audio = now = self._clock()
        if self.state not in ("listening", "stopping"):
            self.state = "listening"
            self.last_window = now  # a new segment needs a window's worth of audio before its first window

    def note_level(self, samples) -> None:
        """The audio level of the newest block (RMS, dBFS) and when it came (wall clock), for the dashboard."""
        import numpy as np  # loaded already: the pipeline runs on it

        x = np.asarray(samples, dtype=np.float32)
        if x.size:
            ms = float(np.dot(x, x)) / x.size
            self.audio_level_dbfs = round(10 * math.log10(ms), 1) if math.isfinite(ms) and ms > 1e-12 else (
                -120.0 if math.isfinite(ms) else None)
        self.last_audio_wall = datetime.now(timezone.utc)

    def note_windows(self, n: int, seconds_each: float) -> None:
        if n <= 0:
            return
        self.windows += n
        ms = 1000.0 * seconds_each
        self.latency_ms = ms if self.latency_ms == 0 else 0.9 * self.latency_ms + 0.1 * ms
        self.latency_max_ms = max(self.latency_max_ms, ms)
        self.last_window = self._clock()

    def note_detections(self, detections) -> None:
        if detections:
            self.detections += len(detections)
            d = detections[-1]
            self.last_detection = {"label": d.label, "common_name": d.common_name, "score": round(d.score, 3),
                                   "start_utc": d.start_utc}

    def note_signal(self, guard) -> None:
        """The pipeline's signal guard counters (edge.detection.guard.SignalGuard)."""
        self.no_signal_windows, self.no_signal_streak = guard.no_signal_windows, guard.streak

    def note_gap(self, seconds: float) -> None:
        with self._lock:
            self.gaps += 1
            self.gap_s += max(0.0, seconds)

    def note_waiting(self) -> None:
        """The capture loop is alive, retrying a missing device."""
        self.last_waiting = self._clock()
        if self.state != "stopping":
            self.state = "waiting-for-device"

    def note_device(self, name: str, rate: int) -> None:
        self.device, self.capture_rate = name, rate

    def note_model(self, version: str, sha256: str) -> None:
        self.model_version, self.model_sha256 = version, sha256

    # -- readers -----------------------------------------------------------------
    def uptime_s(self) -> float:
        return self._clock() - self.started_monotonic

    def disk_free_mb(self) -> float | None:
        p = self.disk_path
        while not p.exists() and p != p.parent:
            p = p.parent
        try:
            return shutil.disk_usage(p).free / 1e6
        except OSError:
            return None

    def progressing(self, grace_s: float) -> bool:
        """Audio and inference both moved within ``grace_s``, or the device loop is alive and retrying."""
        now = self._clock()
        if self.state == "waiting-for-device":
            return now - self.last_waiting < grace_s
        if self.state == "starting":
            return now - self.started_monotonic < max(grace_s, 120.0)
        return now - self.last_audio < grace_s and now - self.last_window < grace_s + self.window_delay_s

    def snapshot(self) -> dict:
        return {
            "device_id": self.device_id,
            "state": self.state,
            "uptime_s": round(self.uptime_s(), 1),
            "started_utc": format_utc(self.started_utc, ms=False),
            "audio_device": self.device,
            "capture_rate": self.capture_rate,
            "audio_s": round(self.audio_s, 1),
            "audio_level_dbfs": self.audio_level_dbfs,
            "last_audio_utc": format_utc(self.last_audio_wall) if self.last_audio_wall else None,
            "windows_processed": self.windows,
            "inference_latency_ms": round(self.latency_ms, 2),
            "inference_latency_max_ms": round(self.latency_max_ms, 2),
            "detections": self.detections,
            "no_signal_windows": self.no_signal_windows,
            "no_signal_streak": self.no_signal_streak,
            "overflows": self.overflows,
            "dropped_frames": self.dropped_frames,
            "gaps": self.gaps,
            "gap_s": round(self.gap_s, 1),
            "device_losses": self.device_losses,
            "disk_free_mb": None if (free := self.disk_free_mb()) is None else round(free, 1),
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            # flat scalars: the MQTT status schema allows no nested objects
            "last_label": (self.last_detection or {}).get("label"),
            "last_common_name": (self.last_detection or {}).get("common_name"),
            "last_detection_utc": (self.last_detection or {}).get("start_utc"),
        }

    def summary(self) -> str:
        """The short live line for systemd's STATUS=."""
        up = self.uptime_s()
        h, m = int(up // 3600), int(up % 3600 // 60)
        parts = [self.state, f"up {h}h{m:02d}m", f"{self.windows} windows", f"{self.latency_ms:.1f} ms/window",
                 f"{self.detections} detections", f"{self.overflows} overflows", f"{self.gaps} gaps"]
        if self.no_signal_streak:
            parts.insert(1, f"NO SIGNAL for {self.no_signal_streak} windows (silence, constant or non-finite input)")
        if self.last_detection:
            parts.append(f"last {self.last_detection['common_name'] or self.last_detection['label']}")
        return ", ".join(parts)
