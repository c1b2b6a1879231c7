"""The dashboard inside the live daemon (``web.enabled``): PortAudio through the ALSA ``file``
device, ``python -m edge run`` in a child process. The dashboard answers while it records, with
the daemon's live health; clips are kept although ``clips.enabled`` is off; the health report
file is written for a dashboard in another process."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import yaml

from fixtures_web import free_port
from test_live_capture import REPO, SR, rows, tone_program, tones  # noqa: F401 - tones is a fixture


def test_daemon_runs_the_dashboard_and_keeps_clips(tmp_path, alsa_device, tones):  # noqa: F811
    bundle, key = tones
    x, expected = tone_program()
    # The ALSA file device has no clock: the daemon captures as fast as it can. On a loaded machine the
    # run can end before the dashboard answers; then the same run is made again with more audio, so the
    # pages are always fetched from the running daemon (no sleep decides the outcome).
    for repeat in (3, 12, 48):
        xs = __import__("numpy").tile(x, repeat)
        proc, pages, err, state, name = _run_and_fetch(tmp_path / f"run{repeat}", xs, bundle, key, alsa_device)
        if len(pages) == 2 or proc.returncode != 0:
            break
    x = xs
    assert proc.returncode == 0, err[-3000:]
    assert name in pages["/health"]  # the capture device, from the daemon's live health numbers
    assert "dawnchorus" in pages["/"]
    dets = rows(state / "detections.db", "detections")
    assert {d["label"] for d in dets} == expected
    assert len(sorted((state / "clips").rglob("*.wav"))) == len(dets)  # kept for the dashboard
    report = json.loads((state / "health.json").read_text())
    assert report["health"]["state"] == "stopped" and report["health"]["audio_device"] == name
    quiet = 10 * __import__("math").log10(float((x[-SR // 2:] ** 2).mean()))  # the recording ends in noise
    assert abs(report["health"]["audio_level_dbfs"] - quiet) < 3 and report["health"]["last_audio_utc"]
    assert "audio level dBFS</span>" in pages["/health"] and "(not reported)" not in pages["/health"]
    assert report["mqtt"] == {"enabled": False} and report["pid"] == proc.pid


def _run_and_fetch(root, x, bundle, key, alsa_device):
    """One daemon run over ``x`` with the dashboard on; the pages fetched while it ran."""
    root.mkdir()
    env, name = alsa_device(x, name=f"dcweb{root.name}")
    state = root / "state"
    port = free_port()
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "web-recorder", "state_dir": str(state), "store": {"path": str(state / "detections.db")},
        "audio": {"device": name, "ring_buffer_s": 120}, "updates": {"enabled": False},
        "model": {"bundle": str(bundle), "public_key": str(key)}, "status_interval_s": 1,
        "clips": {"dir": str(state / "clips")}, "web": {"enabled": True, "listen": f"127.0.0.1:{port}"}}))
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--duration", str(len(x) / SR)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pages: dict[str, str] = {}
    try:
        while proc.poll() is None and len(pages) < 2:
            for path in ("/health", "/"):
                try:
                    pages[path] = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).read().decode()
                except OSError:
                    pass
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, pages, err, state, name
