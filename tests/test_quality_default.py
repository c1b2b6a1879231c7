"""The shipped models stay quiet: replayed through the edge on a committed noise clip (wind, rain, hum,
white noise; tests/data/make_quiet_clips.py) and a committed clip of digital silence, they store nothing."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUIET = Path(__file__).parent / "data" / "quiet"


def _replay_db(clip: Path, tmp_path: Path, bundle: str) -> list:
    db = tmp_path / f"{clip.stem}.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edge", "replay", "--bundle", str(ROOT / "edge" / "models" / bundle),
                        "--db", str(db), str(clip)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT label, score FROM detections").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("bundle, clip", [("default.bundle", "silence.flac"), ("default.bundle", "noise.ogg"),
                                          ("fast.bundle", "silence.flac"), ("fast.bundle", "noise.ogg")])
def test_shipped_models_store_nothing_on_silence_and_noise(clip, bundle, tmp_path):
    assert _replay_db(QUIET / clip, tmp_path, bundle) == []


def test_demo_names_its_labelled_species_and_at_most_one_other(tmp_path):
    """The README's main job: the default model on the bundled recording names the species it is labelled
    with (those among the model's classes) and at most one other."""
    import json

    demo = ROOT / "edge" / "demo"
    (name, meta), = json.loads((demo / "credits.json").read_text()).items()
    labelled = {meta["primary_label"], *meta["secondary_labels"]}
    found = {label for label, _ in _replay_db(demo / name, tmp_path, "default.bundle")}
    assert found, "the default model names nothing in the demo recording"
    assert len(found - labelled) <= 1, sorted(found - labelled)
    assert meta["primary_label"] in found
