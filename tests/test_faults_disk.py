"""The live daemon on a small disk: clips yield to the store, a full disk loses no detection.

Real ``python -m edge run`` through PortAudio and the ALSA file device, real
SQLite on a tmpfs of a few MB (root only: skipped elsewhere).
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import yaml

from edge.outputs.journal import EXIT_UNSTORED, Journal, journal_path
from edge.outputs.store import Store
from fixtures_faults import small_disk  # noqa: F401 - fixture
from fixtures_mqtt import REPO
from fixtures_replay import TONES, make_tone_bundle, noise, tone_bursts

SR = 32000


def _program(n: int = 8) -> np.ndarray:
    """n separate events, alternating two species: each one a clip of about 6 s (380 kB)."""
    parts = []
    for i in range(n):
        f = TONES["Tonus_lowus"] if i % 2 else TONES["Tonus_highus"]
        parts += [tone_bursts(f, 3, seed=i), noise(4, seed=100 + i)]
    return np.concatenate(parts)


def _run(tmp_path, alsa_device, state, extra: dict, x: np.ndarray) -> subprocess.CompletedProcess:
    kdir = tmp_path / "keys"
    kdir.mkdir(exist_ok=True)
    bundle = make_tone_bundle(kdir) if not (kdir / "tones-1.0.0.bundle").exists() else kdir / "tones-1.0.0.bundle"
    env, name = alsa_device(x)
    cfg = {"device_id": "disk1", "state_dir": str(tmp_path / "state"), "audio": {"device": name, "ring_buffer_s": 120},
           "updates": {"enabled": False}, "model": {"bundle": str(bundle), "public_key": str(kdir / "signing.pub")},
           "store": {"path": str(state / "detections.db")}, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(path), "--duration", str(len(x) / SR)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def _ids(db) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT id FROM detections")}
    finally:
        con.close()


def _detected(stderr: str) -> int:
    return sum(1 for ln in stderr.splitlines() if " detected " in ln)


def test_clips_yield_to_the_store_on_a_shared_disk(tmp_path, alsa_device, small_disk):
    disk = small_disk(2048)
    x = _program()
    r = _run(tmp_path, alsa_device, disk.path, {"clips": {"enabled": True, "dir": str(disk.path / "clips")},
                                                "store": {"path": str(disk.path / "detections.db"),
                                                          "reserve_mb": 0.6}}, x)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-6000:]
    n = _detected(r.stderr)
    assert n >= 6
    assert len(_ids(disk.path / "detections.db")) == n  # every detection stored
    clips = list((disk.path / "clips").rglob("*.wav"))
    assert 0 < len(clips) < n  # some clips were written, the rest yielded
    assert not list((disk.path / "clips").rglob("*.part"))
    assert disk.free_kb() >= 0.6e3 - 64  # the floor held (within a page or two of SQLite's)
    assert r.stderr.count("skipped: ") <= 1  # logged once, with a count


def test_full_store_disk_keeps_detections_in_the_journal_and_exits_non_zero(tmp_path, alsa_device, small_disk):
    disk = small_disk(1024)
    db = disk.path / "detections.db"
    Store(db).close()
    Journal(journal_path(db)).close(remove_if_empty=False)  # a first run reserved the journal's space
    disk.fill(keep_kb=40)  # room to open the store (its -shm), not to store
    x = _program(6)
    r = _run(tmp_path, alsa_device, disk.path, {}, x)
    assert r.returncode == EXIT_UNSTORED, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-6000:]
    n = _detected(r.stderr)  # "detected" is logged once stored; what waits is not logged as detected
    waiting = Journal(journal_path(db)).read()
    assert len(waiting) >= 4 and n + len(waiting) >= 6
    assert r.stderr.count("cannot store detections in") == 1, r.stderr[-3000:]  # no log flood
    assert sum("not stored in" in ln for ln in r.stderr.splitlines()) == 1

    disk.unfill()
    r = _run(tmp_path, alsa_device, disk.path, {}, noise(3))  # the next start: the journal goes into the store
    assert r.returncode == 0, r.stderr[-3000:]
    assert {d.id for d in waiting} <= _ids(db)
    assert Journal(journal_path(db)).read() == []
