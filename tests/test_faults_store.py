"""Replay into a store that refuses (locked by another process, read-only, disk full): no traceback, nothing lost.

Real ``python -m edge replay`` processes and real SQLite files: the detections
the store could not take wait in ``<store>.journal``, the run exits
``EXIT_UNSTORED`` (3) with one line naming the store, and the next run stores
them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from edge.outputs.journal import EXIT_UNSTORED, Journal, StoreGuard, journal_path
from edge.outputs.store import Store
from fixtures_faults import Locker, immutable, small_disk  # noqa: F401 - fixture
from fixtures_replay import SR, TONES, noise, tone_bursts
from mqtt_helpers import make_detections
from fixtures_mqtt import wait_until
from test_replay import ROOT, replay, rows, tone_args


def _recording(d):
    d.mkdir(parents=True, exist_ok=True)
    x = np.concatenate([tone_bursts(TONES["Tonus_midus"], 6, seed=3), noise(3), tone_bursts(TONES["Tonus_highus"], 6,
                                                                                           seed=4), noise(3, seed=5)])
    sf.write(d / "rec.wav", x, SR)
    return d


def _reference(tmp_path, recs, tone_bundle_path) -> set[str]:
    ref = tmp_path / "ref.db"
    r = replay(recs, "--db", ref, "--no-progress", *tone_args(tone_bundle_path))
    assert r.returncode == 0, r.stderr
    ids = {x["id"] for x in rows(ref)}
    assert ids
    return ids


def _refused_cleanly(r, db) -> None:
    assert r.returncode == EXIT_UNSTORED, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and str(db) in line[0] and "not stored" in line[0], r.stderr[-3000:]


def _empty_dir(tmp_path):
    """A recording with nothing in it: a run that only stores what waits in the journal."""
    d = tmp_path / "nothing"
    d.mkdir(exist_ok=True)
    sf.write(d / "quiet.wav", noise(2, seed=9), SR)
    return d


def test_store_locked_beyond_the_busy_timeout(tmp_path, tone_bundle_path):
    recs = _recording(tmp_path / "recs")
    ref = _reference(tmp_path, recs, tone_bundle_path)
    db = tmp_path / "d.db"
    Store(db).close()
    lock = Locker(db)
    try:
        r = replay(recs, "--db", db, "--no-progress", *tone_args(tone_bundle_path))
    finally:
        lock.release()
    _refused_cleanly(r, db)
    assert {d.id for d in Journal(journal_path(db)).read()} == ref
    r = replay(_empty_dir(tmp_path), "--db", db, "--no-progress", *tone_args(tone_bundle_path))
    assert r.returncode == 0, r.stderr
    assert {x["id"] for x in rows(db)} == ref
    assert Journal(journal_path(db)).read() == []


def test_read_only_store(tmp_path, tone_bundle_path):
    recs = _recording(tmp_path / "recs")
    ref = _reference(tmp_path, recs, tone_bundle_path)
    db = tmp_path / "d.db"
    Store(db).close()
    immutable(db)
    try:
        r = replay(recs, "--db", db, "--no-progress", *tone_args(tone_bundle_path))
    finally:
        immutable(db, False)
    _refused_cleanly(r, db)
    assert "readonly" in r.stderr
    r = replay(_empty_dir(tmp_path), "--db", db, "--no-progress", *tone_args(tone_bundle_path))
    assert r.returncode == 0, r.stderr
    assert {x["id"] for x in rows(db)} == ref


def test_disk_fills_during_replay(tmp_path, tone_bundle_path, small_disk):
    """The disk fills while a (real-time paced) replay runs: the journal's reserved space takes the detections."""
    recs = tmp_path / "recs"
    recs.mkdir()
    sf.write(recs / "rec.wav", np.concatenate([tone_bursts(TONES["Tonus_midus"], 5, seed=3), noise(2)]), SR)
    ref = _reference(tmp_path, recs, tone_bundle_path)
    disk = small_disk(1024)
    db = disk.path / "d.db"
    r = replay(_empty_dir(tmp_path), "--db", db, "--no-progress", *tone_args(tone_bundle_path))
    assert r.returncode == 0, r.stderr  # the store and its journal's reserved space exist
    e = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edge", "replay", str(recs), "--db", str(db), "--realtime",
                             "--no-progress", *map(str, tone_args(tone_bundle_path))], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: Path(str(db) + "-wal").exists(), 60)  # the store is open
    disk.fill()
    out, err = proc.communicate(timeout=120)
    _refused_cleanly(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), db)
    disk.unfill()
    r = replay(_empty_dir(tmp_path), "--db", db, "--no-progress", *tone_args(tone_bundle_path))
    assert r.returncode == 0, r.stderr
    assert {x["id"] for x in rows(db)} == ref


def test_journal_skips_a_torn_last_line_and_guard_logs_once(tmp_path, caplog):
    db = tmp_path / "d.db"
    store = Store(db)
    j = Journal(journal_path(db), size=64 << 10)
    dets = make_detections(30)
    assert j.append(dets[:10]) == 10
    # a SIGKILL in the middle of a write: half a record after the last newline
    with open(j.path, "r+b") as f:
        f.seek(j._end)
        f.write(json.dumps(dets[10].to_dict()).encode()[:40])
    j.close()
    store.close()

    immutable(db)  # the store refuses every write
    try:
        store = Store(db)
        t = [0.0]
        guard = StoreGuard(store, Journal(journal_path(db), size=64 << 10), clock=lambda: t[0], log_interval_s=60)
        assert guard.unstored == 10  # recovered, the torn line skipped
        for i in range(10, 30):
            t[0] += 0.05  # twenty blocks a second apart: retried with backoff, logged once
            guard.insert([dets[i]])
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "cannot store" in r.getMessage()]
        assert len(errors) == 1
        assert guard.unstored == 30
        store.close()
    finally:
        immutable(db, False)
    store = Store(db)
    guard = StoreGuard(store, Journal(journal_path(db), size=64 << 10))
    assert guard.unstored == 0 and store.count() == 30
    assert guard.close() == 0
