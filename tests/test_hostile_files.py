"""Hostile audio files, file-system oddities and stores, through a real ``python -m edge replay``.

Every crafted file and oddity of tests/hostile_inputs.py sits in ONE directory
replayed by ONE process: it must go through all of them (no abort), refuse
each bad one with a one-line reason that names it, process the good ones,
store what it prints, exit 1 (some files refused) and never show a traceback.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from hostile_inputs import AUDIO_CASES, FS_CASES, NEED_NO_DAC, NO_SIGNAL, REPO, _good_flac, build_tree, noise

ALL = AUDIO_CASES + FS_CASES


from edge.sources import display_path as display


def replay_cmd(*args: str, no_dac: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "edge", "replay", "--no-progress", *args]
    if no_dac and os.geteuid() == 0 and shutil.which("setpriv"):
        # root reads any file: drop the capability so that permissions mean what they say
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return cmd


def can_deny() -> bool:
    return os.geteuid() != 0 or shutil.which("setpriv") is not None


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile") / "tree"
    d.mkdir()
    paths = build_tree(d)
    db = d.parent / "store.db"
    r = subprocess.run(replay_cmd("--db", str(db), "--format", "csv", str(d), no_dac=True), cwd=REPO,
                       capture_output=True, timeout=300)
    for p in (paths["unreadable file"], paths["unreadable directory"]):
        p.chmod(0o700)  # so that pytest can clean up
    out, err = r.stdout.decode(), r.stderr.decode("utf-8", "replace")
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(x) for x in con.execute("SELECT * FROM detections")]
    sources = {x[0] for x in con.execute("SELECT source FROM effort")}
    con.close()
    return {"dir": d, "paths": paths, "rc": r.returncode, "out": out, "err": err, "rows": rows,
            "sources": sources, "printed": list(csv.DictReader(io.StringIO(out)))}


def refused_lines(err: str) -> list[str]:
    lines = err.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("refused "))
    return [ln.strip() for ln in lines[at + 1:] if ln.startswith("  ")]


def test_replay_goes_through_every_file_without_a_traceback(replayed):
    assert "Traceback" not in replayed["err"], replayed["err"][-3000:]
    assert replayed["rc"] == 1, replayed["err"][-2000:]  # some files were refused: 1, documented
    good = display(replayed["dir"] / "good.flac")
    assert good in replayed["sources"]
    assert any(r["source"] == good for r in replayed["rows"])  # the good recording gave detections


def test_nothing_printed_is_missing_from_the_store(replayed):
    printed = {r["id"] for r in replayed["printed"]}
    assert printed and printed == {r["id"] for r in replayed["rows"]}


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_each_file(case, replayed):
    if case.name in NEED_NO_DAC and not can_deny():
        pytest.skip("root without setpriv cannot be denied a file")
    path = replayed["paths"][case.name]
    name = display(path)
    lines = refused_lines(replayed["err"])
    mine = [ln for ln in lines if name in ln]
    if case.phrase is None:
        assert not mine, mine
        if case.name in ("hidden file", "directory named wav"):
            return  # skipped by the walk: nothing to process
        resolved = display(Path(os.path.realpath(path)))
        assert resolved in replayed["sources"], (resolved, sorted(replayed["sources"]))
        if path.name in NO_SIGNAL:
            assert not [r for r in replayed["rows"] if r["source"] == resolved]
    else:
        assert len(mine) == 1, (name, lines)
        assert case.phrase in mine[0], mine[0]
        assert len(mine[0]) < 400


def test_non_finite_samples_never_reach_a_detection(replayed):
    for name in ("nan.wav", "inf.wav"):
        src = display(replayed["dir"] / name)
        assert src in replayed["sources"]
        for r in replayed["rows"]:
            if r["source"] == src:  # the bad samples are at 2..3 s and 5.0005 s: no event may cover them
                assert not (r["offset_s"] < 3.0 and r["end_offset_s"] > 2.0), r
                assert not (r["offset_s"] <= 5.001 <= r["end_offset_s"]), r
    assert "without signal not scored" in replayed["err"]


def test_raven_tables_mirror_input_folders(tmp_path):
    """The AudioMoth fleet layout: same names on two cards give two tables, BirdNET-Analyzer's column order."""
    card = tmp_path / "cards"
    for sd in ("SD1", "SD2"):
        (card / sd).mkdir(parents=True)
        _good_flac(card / sd, "20240501_050000.WAV", 12.0)
    out = tmp_path / "raven"
    r = subprocess.run(replay_cmd("--no-db", "--format", "raven", "--out", str(out), str(card)), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    tables = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert tables == ["SD1/20240501_050000.dawnchorus.selection.table.txt",
                      "SD2/20240501_050000.dawnchorus.selection.table.txt"]
    head = (out / tables[0]).read_text().splitlines()[0].split("\t")
    assert head[:12] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                         "High Freq (Hz)", "Common Name", "Species Code", "Confidence", "Begin Path",
                         "File Offset (s)"]
    paths = {(out / t).read_text().splitlines()[1].split("\t")[10] for t in tables}
    assert paths == {str(card / "SD1" / "20240501_050000.WAV"), str(card / "SD2" / "20240501_050000.WAV")}
    # the same names given as two files (no common folder below them) still give two tables
    out2 = tmp_path / "raven2"
    r = subprocess.run(replay_cmd("--no-db", "--format", "raven", "--out", str(out2),
                                  str(card / "SD1" / "20240501_050000.WAV"), str(card / "SD2" / "20240501_050000.WAV")),
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and len(list(out2.rglob("*.txt"))) == 2, r.stderr
    # a file where a table's folder should go: that table is reported (exit 1), the other one written
    out3 = tmp_path / "raven3"
    out3.mkdir()
    (out3 / "SD1").write_text("in the way")
    r = subprocess.run(replay_cmd("--no-db", "--format", "raven", "--out", str(out3), str(card)), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write {out3 / 'SD1' / '20240501_050000.dawnchorus.selection.table.txt'}" in r.stderr
    assert (out3 / "SD2" / "20240501_050000.dawnchorus.selection.table.txt").exists()
    # --out names a file: refused before any audio, exit 2, one line
    r = subprocess.run(replay_cmd("--no-db", "--format", "raven", "--out", str(out3 / "SD1"), str(card)), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"error: cannot write {out3 / 'SD1'}" in r.stderr


# -- stores ----------------------------------------------------------------------------------
def _foreign(p: Path) -> Path:
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE detections (who TEXT)")
    con.execute("INSERT INTO detections VALUES ('keep me')")
    con.commit()
    con.close()
    return p


def _future(p: Path) -> Path:
    con = sqlite3.connect(p)
    con.execute("PRAGMA user_version = 99")
    con.close()
    return p


STORES = [
    ("garbage file", lambda p: (p.write_bytes(np.random.default_rng(3).bytes(5000)), p)[1], "not a database"),
    ("a directory", lambda p: (p.mkdir(), p)[1], "cannot open the store"),
    ("parent is a file", lambda p: (p.write_text("x"), p / "detections.db")[1], "cannot open the store"),
    ("another program's database", _foreign, "migration"),
    ("schema from the future", _future, "newer than this dawnchorus"),
    ("empty file", lambda p: (p.write_bytes(b""), p)[1], None),
]


@pytest.mark.parametrize("name, make, phrase", STORES, ids=[s[0] for s in STORES])
def test_hostile_store(name, make, phrase, tmp_path):
    audio = _good_flac(tmp_path, "good.flac", 4.0)
    db = make(tmp_path / "store.db")
    r = subprocess.run(replay_cmd("--db", str(db), str(audio)), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    if phrase is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2, r.stderr
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and phrase in line[0] and str(db) in line[0], r.stderr
    if name == "another program's database":  # left as it was
        assert sqlite3.connect(tmp_path / "store.db").execute("SELECT who FROM detections").fetchall() == [("keep me",)]


# -- the signal guard, in the pipeline -----------------------------------------------------------
def test_guard_no_signal_never_detects_even_at_threshold_zero(team_keys):
    """With every threshold at 0 any scored window is a detection: silence, DC and NaN give none."""
    from datetime import datetime, timezone

    from edge.contract.bundle import parse_bundle
    from edge.contract.interpreter import load_model
    from edge.detection.pipeline import Pipeline
    from edge.outputs.mqtt.payloads import load_schema
    from edge.service.health import Health
    from edge.types import AudioBlock
    from fixtures_updates import make_bundle

    bundle = parse_bundle(make_bundle(team_keys.private, "1.0", thresholds=0.0), team_keys.public)
    sr = bundle.frontend.sample_rate
    p = Pipeline(bundle, load_model(bundle), device_id="t")
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    for name, x in [("silence", np.zeros(sr * 8, np.float32)), ("dc", np.full(sr * 8, -0.4, np.float32)),
                    ("nan", np.full(sr * 8, np.nan, np.float32)), ("inf", np.full(sr * 8, np.inf, np.float32))]:
        p.begin(name, "file-name")
        dets = p.feed(AudioBlock(x, t0, 0.0)) + p.finish()
        assert dets == [], name
    assert p.guard.no_signal_windows >= 4 * 4 and p.guard.streak == p.guard.no_signal_windows
    assert p.guard.nonfinite_samples == 2 * sr * 8
    h = Health("t")
    h.note_signal(p.guard)
    snap = h.snapshot()
    assert snap["no_signal_streak"] > 0 and "NO SIGNAL" in h.summary()
    jsonschema.validate({"schema": "dawnchorus/status/1", "device_id": "t", "state": "online",
                         "ts": "2024-05-01T00:00:00Z", "health": {**snap, "outbox_depth": 0}}, load_schema("status"))
    p.begin("noise", "file-name")  # and real signal is scored (so it is the guard that said no above)
    dets = p.feed(AudioBlock(noise(8.0), t0, 0.0)) + p.finish()
    assert dets and p.guard.streak == 0
