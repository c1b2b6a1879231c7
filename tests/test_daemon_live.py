"""The daemon at the real rate: sd_notify, the watchdog, device loss and return, SIGTERM.

A private PulseAudio server's null sink is the microphone (its monitor,
through ALSA's pulse plugin, PortAudio and sounddevice): the test plays
tone bursts into it at the real rate, freezes the server (SIGSTOP: audio
stops, nothing errors - a hang), kills it (the device vanishes) and starts
it again (the device returns), while a unix datagram socket in the test
stands in for systemd's NOTIFY_SOCKET.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fixtures_replay import TONES, make_tone_bundle, noise, tone_bursts
from test_live_capture import REPO, rows

pytestmark = pytest.mark.slow


class NotifySocket:
    """systemd's side of sd_notify: collects (monotonic time, message) pairs."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="dcn", dir="/tmp")  # AF_UNIX paths are short
        self.path = str(Path(self.dir) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._rx, daemon=True)
        self._t.start()

    def _rx(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            for line in data.decode().split("\n"):
                self.messages.append((time.monotonic(), line))

    def times(self, prefix: str, since: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if m.startswith(prefix) and t >= since]

    def wait_for(self, prefix: str, timeout: float, since: float = 0.0, count: int = 1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.times(prefix, since)) >= count:
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)
        Path(self.dir).rmdir()


def wait_log(lines: list[str], text: str, timeout: float, start: int = 0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, line in enumerate(list(lines)[start:], start):
            if text in line:
                return i
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r} within {timeout} s:\n" + "".join(lines[-30:]))


def test_notify_watchdog_device_loss_and_sigterm(tmp_path, pulse_server):
    bundle = make_tone_bundle(tmp_path)
    low = {v: k for k, v in TONES.items()}[1200.0]
    program = np.concatenate([tone_bursts(1200.0, 8), noise(4)])
    pulse_server.play(np.tile(program, 4))
    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "live-test", "state_dir": str(state), "store": {"path": str(state / "d.db")},
        "model": {"bundle": str(bundle), "public_key": str(tmp_path / "signing.pub")},
        "audio": {"device": "dcpulse", "retry_initial_s": 0.5, "retry_max_s": 1.0},
        "updates": {"enabled": False}, "status_interval_s": 1,
    }))
    notify = NotifySocket()
    env = dict(pulse_server.env, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        # READY once audio flows and the model is loaded; then steady pings and a STATUS line
        assert notify.wait_for("READY=1", 30), "".join(lines)
        ready = notify.times("READY=1")[0]
        assert notify.wait_for("WATCHDOG=1", 10, since=ready, count=3)
        assert notify.wait_for("STATUS=listening", 5)

        # a hang: the server freezes, no audio, no error -> pings are withheld
        pulse_server.pause()
        frozen = time.monotonic()
        time.sleep(12)  # buffered audio drains, then 6 s of grace, then no pings
        last_ping = max(notify.times("WATCHDOG=1"))
        assert last_ping < time.monotonic() - 2.5, "pings went on while nothing progressed"
        pulse_server.resume()
        resumed = time.monotonic()
        assert notify.wait_for("WATCHDOG=1", 30, since=resumed), "".join(lines)
        assert resumed - frozen > 11

        # the device vanishes: a known state, retried; pings go on while the loop retries
        i = wait_log(lines, "listening on", 30, start=wait_log(lines, "lost", 30))
        pulse_server.kill()
        killed = time.monotonic()
        j = wait_log(lines, "unavailable", 20, start=i + 1)
        time.sleep(3)
        assert len(notify.times("WATCHDOG=1", since=killed + 1)) >= 2, "no pings while retrying the device"
        pulse_server.start()
        pulse_server.play(np.tile(program, 3))
        wait_log(lines, "listening on", 30, start=j)
        back = time.monotonic()
        assert notify.wait_for("WATCHDOG=1", 15, since=back, count=3)
        time.sleep(6)
        # SIGTERM while listening: ordered stop, exit 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    reader.join(5)
    log = "".join(lines)
    assert "SIGTERM: stopping" in log
    assert notify.times("STOPPING=1")
    db = state / "d.db"
    gaps = rows(db, "gaps")
    reasons = " ".join(g["reason"] for g in gaps)
    assert len(gaps) >= 2 and "device lost" in reasons
    effort = rows(db, "effort")
    assert len(effort) >= 3 and all(e["end_utc"] for e in effort)  # one per listening session, all closed
    dets = rows(db, "detections")
    assert dets and {d["label"] for d in dets} == {low}
