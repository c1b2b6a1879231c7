"""``python -m edge replay`` end to end, in a real process: files and directories into a real
SQLite store, bad files refused while the rest goes on, idempotent re-runs, output formats,
and the bundled demo recording with the bundled default model."""
from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_replay import SR, TONES, noise, tone_bursts

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edge" / "demo"
MODELS = ROOT / "edge" / "models"


def replay(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge", "replay", *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def rows(db) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM detections ORDER BY seq")]
    finally:
        con.close()


@pytest.fixture
def recordings(tmp_path):
    """Two good recordings (one 48 kHz stereo 24-bit with a time in its name) and three bad ones."""
    d = tmp_path / "recs"
    (d / "night").mkdir(parents=True)
    mid = np.concatenate([noise(6), tone_bursts(TONES["Tonus_midus"], 9, seed=3), noise(5, seed=2)])
    from scipy.signal import resample_poly

    mid48 = resample_poly(mid, 3, 2).astype(np.float32)
    sf.write(d / "20240501_053000.wav", np.stack([mid48, mid48 * 0.5], axis=1), 48000, subtype="PCM_24")
    high = np.concatenate([tone_bursts(TONES["Tonus_highus"], 6, seed=4), noise(6, seed=7)])
    sf.write(d / "night" / "site2.flac", high, SR)
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("field notes, not audio\n" * 30)
    whole = io.BytesIO()
    sf.write(whole, noise(4), SR, format="WAV", subtype="PCM_16")
    (d / "cut.wav").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return d


def tone_args(tone_bundle_path):
    return ["--bundle", tone_bundle_path, "--public-key", tone_bundle_path.parent / "signing.pub"]


def test_directory_replay_refuses_bad_files_and_goes_on(tmp_path, recordings, tone_bundle_path):
    db = tmp_path / "d.db"
    r = replay(recordings, *tone_args(tone_bundle_path), "--db", db, "--format", "csv")
    assert r.returncode == 1, r.stderr  # some files refused
    for name, why in [("empty.wav", "empty file"), ("notes.wav", "not an audio file"), ("cut.wav", "truncated")]:
        assert any(name in line and why in line for line in r.stderr.splitlines()), (name, r.stderr)
    assert "replayed 2 of 5 file(s)" in r.stderr
    out = list(csv.DictReader(io.StringIO(r.stdout)))
    found = {(Path(d["source"]).name, d["label"]) for d in out}
    assert found == {("20240501_053000.wav", "Tonus_midus"), ("site2.flac", "Tonus_highus")}
    mid = next(d for d in out if d["label"] == "Tonus_midus")
    assert 3.0 <= float(mid["offset_s"]) <= 6.0 and mid["time_source"] == "file-name"
    assert mid["start_utc"].startswith("2024-05-01T05:30:0")
    high = next(d for d in out if d["label"] == "Tonus_highus")
    assert high["time_source"] == "replay-time" and float(high["offset_s"]) == 0.0
    stored = rows(db)
    assert sorted(d["id"] for d in stored) == sorted(d["id"] for d in out)
    assert all(d["published_utc"] is None and d["device_id"] == "recorder" for d in stored)
    assert f"store: {db} ({len(out)} new detection(s), 0 already stored)" in r.stderr

    again = replay(recordings, *tone_args(tone_bundle_path), "--db", db, "--format", "csv")
    assert f"store: {db} (0 new detection(s), {len(out)} already stored)" in again.stderr
    assert rows(db) == stored  # not one row more, none changed
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM effort").fetchone()[0] == 2  # one listening session per good file
    con.close()


def test_raven_tables_and_json(tmp_path, recordings, tone_bundle_path):
    good = [recordings / "20240501_053000.wav", recordings / "night" / "site2.flac"]
    r = replay(*good, *tone_args(tone_bundle_path), "--no-db", "--format", "raven", "--out", tmp_path / "raven")
    assert r.returncode == 0, r.stderr
    tables = sorted((tmp_path / "raven").rglob("*.txt"))  # the input folders mirrored, as BirdNET-Analyzer does
    assert [t.relative_to(tmp_path / "raven").as_posix() for t in tables] == [
        "20240501_053000.dawnchorus.selection.table.txt", "night/site2.dawnchorus.selection.table.txt"]
    body = list(csv.DictReader(tables[0].open(), delimiter="\t"))
    assert [b["Species Code"] for b in body] == ["Tonus_midus"] and body[0]["Selection"] == "1"
    out = tmp_path / "d.json"
    r = replay(*good, *tone_args(tone_bundle_path), "--no-db", "--format", "json", "--out", out,
               "--start-time", "2023-01-02T03:04:05Z", "--device-id", "site-7", "--overlap", "0")
    data = json.loads(out.read_text())
    assert {d["label"] for d in data} == {"Tonus_midus", "Tonus_highus"}
    assert all(d["time_source"] == "config" and d["start_utc"].startswith("2023-01-02T03:0") for d in data)
    assert all(d["device_id"] == "site-7" and d["offset_s"] % 3.0 == 0 for d in data)


def test_default_store_path_and_config(tmp_path, recordings, tone_bundle_path):
    db = tmp_path / "env" / "detections.db"
    r = replay(recordings / "night", *tone_args(tone_bundle_path), env={"DAWNCHORUS_DB": str(db)})
    assert r.returncode == 0, r.stderr
    assert f"store: {db}" in r.stderr and len(rows(db)) == 1
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"device_id: hill-3\nstore:\n  path: {tmp_path / 'cfg.db'}\ndetection:\n  exclude: [Tonus_highus]\n")
    r = replay(recordings / "night", *tone_args(tone_bundle_path), "--config", cfg)
    assert r.returncode == 0 and "no detections" in r.stderr and rows(tmp_path / "cfg.db") == []
    cfg.write_text("detection:\n  include: [Tonus_typoensis]\n")
    r = replay(recordings / "night", *tone_args(tone_bundle_path), "--config", cfg, "--no-db")
    assert r.returncode == 2 and "Tonus_typoensis" in r.stderr


def test_realtime_paces_delivery(tmp_path, tone_bundle_path):
    p = tmp_path / "short.wav"
    sf.write(p, tone_bursts(TONES["Tonus_lowus"], 3.0), SR)
    t0 = time.monotonic()
    r = replay(p, *tone_args(tone_bundle_path), "--no-db", "--realtime")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= 2.5  # never faster than the audio (a lower bound only)


def test_bad_bundle_and_missing_path(tmp_path, tone_bundle_path):
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(tone_bundle_path.read_bytes()[:1000])
    r = replay(tmp_path, "--bundle", bad, "--public-key", tone_bundle_path.parent / "signing.pub", "--no-db")
    assert r.returncode == 2 and "bad.bundle" in r.stderr
    r = replay(tmp_path / "nothing.wav", *tone_args(tone_bundle_path), "--no-db")
    assert r.returncode == 1 and "nothing.wav: no such file or directory" in r.stderr


# -- the bundled demo with the bundled default model -------------------------------------------

def _default_bundle(name: str = "default"):
    from edge.contract.bundle import load_bundle
    from edge.contract.signing import load_public_key

    return load_bundle(MODELS / f"{name}.bundle", load_public_key(MODELS / "default.pub"))


def _evaluated_prediction(recording_id: str, name: str = "default") -> dict | None:
    """A shipped model's evaluation row for a recording, if its evaluation (predictions csv) has one."""
    for path in sorted(MODELS.rglob(f"{name}_predictions*.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                if recording_id in (row.get("recording") or ""):
                    return row
    return None


@pytest.mark.parametrize("name", ["default", "fast"])
def test_demo_replay_with_shipped_models(tmp_path, name):
    credits = json.loads((DEMO / "credits.json").read_text())
    (demo_name, info), = credits.items()
    bundle = _default_bundle(name)
    known = {lab.label for lab in bundle.labels}
    labelled = ({info["primary_label"], *info["secondary_labels"]}) & known
    db = tmp_path / "demo.db"
    chosen = [] if name == "default" else ["--bundle", MODELS / f"{name}.bundle"]
    r = replay(*chosen, "--db", db, "--format", "json", "--out", tmp_path / "demo.json")
    assert r.returncode == 0, r.stderr
    assert f"store: {db}" in r.stderr and "x realtime" in r.stderr
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data and all(Path(d["source"]).name == demo_name for d in data)
    assert all(d["time_source"] == "file-name" and d["start_utc"] >= "2016-11-10T13:00:00" for d in data)
    assert all(d["model_sha256"] == bundle.sha256 for d in data)
    assert len(rows(db)) == len(data)
    again = replay(*chosen, "--db", db, "--format", "csv")
    assert "0 new detection(s)" in again.stderr and len(rows(db)) == len(data)

    if not bundle.manifest.get("metrics"):
        pytest.skip(f"default model {bundle.version} carries no evaluation (interim, untrained): species not checked")
    best: dict[str, float] = {}
    for d in data:
        best[d["label"]] = max(best.get(d["label"], 0.0), d["score"])
    ranked = sorted(best, key=lambda k: -best[k])
    row = _evaluated_prediction(info["xeno_canto_id"], name)
    if row is not None:
        # the recording was in the model's hold-out: replay must agree with what the evaluation found
        assert row["predicted"] in ranked[:3], (row, ranked)
    else:
        # a training recording (not in the hold-out): its labelled species must lead the detections
        assert ranked[0] in labelled, (ranked, sorted(labelled))
        assert len(set(ranked[:3]) & labelled) >= 2, (ranked[:3], sorted(labelled))
