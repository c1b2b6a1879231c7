"""A dead microphone through the real capture path: an alarm in health, never a bird.

``python -m edge run`` captures from an ALSA test device (tests/fixtures_alsa.py)
that delivers 8 s of noise, then 10 s of digital silence. The model's
thresholds are all 0, so any window that reaches it is a detection: the
noise gives detections, the silence none, and the health report the daemon
leaves (``<state_dir>/health.json``) counts the silent windows and ends with
the no-signal alarm raised.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import yaml

from hostile_inputs import REPO, noise


def test_dead_microphone_raises_the_alarm_and_detects_nothing(tmp_path, alsa_device, team_keys):
    from fixtures_updates import make_bundle

    bundle = tmp_path / "zero.bundle"
    bundle.write_bytes(make_bundle(team_keys.private, "1.0", thresholds=0.0))
    sr = 32000
    x = np.concatenate([noise(8.0, level=0.1), np.zeros(10 * sr, np.float32)])
    env, name = alsa_device(x)
    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "dead-mic", "state_dir": str(state), "store": {"path": str(state / "detections.db")},
        "model": {"bundle": str(bundle), "public_key": str(team_keys.public_path)},
        "audio": {"device": name, "ring_buffer_s": 60}, "updates": {"enabled": False}}))
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--duration", str(len(x) / sr)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    con = sqlite3.connect(state / "detections.db")
    dets = con.execute("SELECT offset_s, end_offset_s FROM detections").fetchall()
    con.close()
    assert dets, "the noise should have given detections at threshold 0"
    window = 3.0
    assert all(start < 8.0 for start, _ in dets), dets  # nothing starts in the silence
    assert all(end <= 8.0 + window for _, end in dets), dets
    health = json.loads((state / "health.json").read_text())["health"]
    assert health["no_signal_windows"] >= 4 and health["no_signal_streak"] >= 4, health
