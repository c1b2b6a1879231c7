"""kill -9 of replay and of the live daemon at random moments: the store stays intact and keeps all it held.

A fast version of ``bench/faults``' kill runs (a few kills; the bench does 50+). Real processes, real SQLite,
the tone model.
"""
from __future__ import annotations

import random
import signal
import subprocess
import time

from fixtures_faults import (REPO, DaemonRig, integrity_ok, proc_env, replay_cmd, store_ids, tone_program,
                             write_recordings)


def test_replay_killed_at_random_moments_then_completed_equals_the_reference(tmp_path, tone_bundle_path):
    recs = write_recordings(tmp_path / "recs", 4, 5)
    ref_db = tmp_path / "ref.db"
    t0 = time.monotonic()
    assert subprocess.run(replay_cmd([recs], ref_db, tone_bundle_path), env=proc_env(), cwd=REPO).returncode == 0
    whole = time.monotonic() - t0
    ref = store_ids(ref_db)
    assert ref
    db = tmp_path / "d.db"
    rng = random.Random(3)
    held: set[str] = set()
    for _ in range(4):
        p = subprocess.Popen(replay_cmd([recs], db, tone_bundle_path), env=proc_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, whole))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert integrity_ok(db)
        now = store_ids(db)
        assert held <= now <= ref  # nothing it held is gone, nothing foreign
        held = now
    r = subprocess.run(replay_cmd([recs], db, tone_bundle_path), env=proc_env(), cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert store_ids(db) == ref


def test_daemon_killed_then_restarted_keeps_everything_stored(tmp_path, tone_bundle_path):
    rig = DaemonRig(tmp_path / "rig", tone_bundle_path)
    db = rig.dir / "detections.db"
    cmd, env = rig.command(tone_program(30, seed=5), db)
    log = tmp_path / "daemon.log"
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 60
    while " detected " not in log.read_text() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert integrity_ok(db)
    before = store_ids(db)
    assert before
    r = rig.run(tone_program(2, seed=6), db)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert before <= store_ids(db)
