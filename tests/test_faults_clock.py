"""Clock steps: the crash-loop counter, live timestamps and ids do not follow an NTP step of the wall clock.

The crash-loop test runs real processes under libfaketime (Debian's ``faketime``), each started with the
wall clock stepped a day further, the monotonic and boot clocks untouched (as NTP does). The stream-clock
tests use an injected wall clock.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.clock import OutboxClock, StreamClock
from fixtures_updates import make_bundle  # noqa: F401 - the team_keys fixture's module
from test_updates_store import CRASHING_START, REPO, crash_loop_setup

LIBFAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                                "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                                "/usr/lib/faketime/libfaketime.so.1") if Path(p).exists()), None)


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime not installed (apt-get install faketime)")
def test_crash_loop_counter_survives_forward_clock_steps(tmp_path, team_keys):
    cfg_path = crash_loop_setup(tmp_path, team_keys, crash_loop_max=2, crash_loop_window_s=300)
    seen = []
    for day in range(3):  # NTP steps the clock a day forward between the crashes
        env = {**os.environ, "PYTHONPATH": str(REPO), "LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"+{day}d",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        out = subprocess.run([sys.executable, "-c", CRASHING_START, str(cfg_path)], env=env, capture_output=True,
                             text=True).stdout.split()
        seen.append(out)
    assert int(seen[2][1]) - int(seen[0][1]) > 2 * 86000  # the wall clock did step
    assert [v for v, _ in seen] == ["2.0", "1.0", "1.0"]  # two crashes within 300 s of running: rolled back


def test_stream_clock_does_not_follow_steps_and_records_them():
    wall, mono = [1_700_000_000.0], [50.0]
    c = StreamClock(lambda: wall[0], lambda: mono[0])
    times = []
    for i in range(10):
        mono[0] += 1.0
        wall[0] += 1.0
        if i == 3:
            wall[0] += 3600.0  # NTP steps forward
        if i == 7:
            wall[0] -= 7200.0  # and back
        times.append(c.now())
        step = c.check()
        if i == 3:
            assert step == pytest.approx(3600.0)
        elif i == 7:
            assert step == pytest.approx(-7200.0)
        else:
            assert step is None
    assert all(b - a == pytest.approx(1.0) for a, b in zip(times, times[1:]))  # never re-anchored
    assert [round(s) for _, s in c.steps] == [3600, -7200]
    # a restart after a step back: times continue after what the store holds
    c2 = StreamClock(lambda: wall[0], lambda: mono[0])
    assert c2.not_before(times[-1] + 10.0) == pytest.approx(times[-1] + 10.0 - wall[0])
    assert c2.now() >= times[-1] + 10.0


def test_outbox_clock_continues_across_restarts():
    mono = [1000.0]
    a = OutboxClock(mono_fn=lambda: mono[0])
    mono[0] += 30
    last = a.now()
    mono[0] = 5.0  # a reboot: the monotonic clock starts again
    b = OutboxClock(mono_fn=lambda: mono[0])
    b.continue_from(last)
    assert b.now() == pytest.approx(last)
    mono[0] += 2
    assert b.now() == pytest.approx(last + 2)


def test_live_daemon_records_a_clock_step_and_keeps_its_timeline(tmp_path, alsa_device):
    """A real daemon; the wall clock steps an hour forward while it runs (the injected offset file):
    one 'clock step' gap row, and no detection time jumps by the step."""
    import sqlite3
    import time as _time

    import numpy as np
    import yaml

    from fixtures_replay import TONES, make_tone_bundle, noise, tone_bursts

    kdir = tmp_path / "keys"
    kdir.mkdir()
    bundle = make_tone_bundle(kdir)
    x = np.concatenate([np.concatenate([tone_bursts(TONES["Tonus_highus"], 3, seed=i), noise(4, seed=i)])
                        for i in range(60)])  # 7 minutes of audio: several seconds for the daemon
    env, name = alsa_device(x)
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    env = {**env, "DAWNCHORUS_CLOCK_OFFSET_FILE": str(offset)}
    db = tmp_path / "state" / "detections.db"
    cfg = {"device_id": "clk1", "state_dir": str(tmp_path / "state"), "audio": {"device": name, "ring_buffer_s": 600},
           "updates": {"enabled": False}, "model": {"bundle": str(bundle), "public_key": str(kdir / "signing.pub")},
           "store": {"path": str(db)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    t_start = _time.time()
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(tmp_path / "c.yaml"),
                             "--duration", str(len(x) / 32000)], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if " detected " in line:
            break
    offset.write_text("3600")  # NTP steps the clock an hour forward
    lines += proc.stderr.readlines()
    assert proc.wait(120) == 0, "".join(lines[-30:])
    t_end = _time.time()
    con = sqlite3.connect(db)
    gaps = con.execute("SELECT reason FROM gaps").fetchall()
    starts = [r[0] for r in con.execute("SELECT start_utc FROM detections ORDER BY seq")]
    con.close()
    assert len([g for g in gaps if g[0].startswith("clock step forward +3600")]) == 1, gaps
    assert sum("wall clock stepped forward" in ln for ln in lines) == 1
    from edge.contract.record import parse_utc

    times = [parse_utc(s).timestamp() for s in starts]
    assert len(times) > 10
    assert all(t_start - 600 < t < t_end + 60 for t in times)  # none moved by the hour
