"""deploy/retrain: the decision rule, the script's flow, and its systemd units.

Training takes minutes, so the script's flow runs with a stand-in for
``python -m trainer`` (a small Python file given as PYTHON) that writes the
metrics a scenario needs and records what was called; the decision rule
itself (compare_metrics.py) and the script are the real ones.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RETRAIN = REPO / "deploy" / "retrain"
sys.path.insert(0, str(RETRAIN))
from compare_metrics import decide  # noqa: E402


def test_decision_rule():
    old = {"macro_roc_auc": 0.80, "recording_top1_accuracy": 0.60}
    ms = ["macro_roc_auc", "recording_top1_accuracy"]
    assert decide({"macro_roc_auc": 0.81, "recording_top1_accuracy": 0.60}, old, ms)[0]  # equal counts as good
    assert not decide({"macro_roc_auc": 0.90, "recording_top1_accuracy": 0.59}, old, ms)[0]
    assert not decide({"macro_roc_auc": 0.805, "recording_top1_accuracy": 0.7}, old, ms, min_gain=0.01)[0]
    assert decide({"macro_roc_auc": 0.1, "recording_top1_accuracy": 0.1}, None, ms)[0]  # nothing deployed
    with pytest.raises(ValueError, match="lack"):
        decide({"macro_roc_auc": 0.9}, old, ms)


STAND_IN = r'''
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
if args[:1] != ["-m"]:  # compare_metrics.py and anything else: the real interpreter
    os.execv(os.environ["REAL_PYTHON"], [os.environ["REAL_PYTHON"], *args])
cmd = args[2]
opt = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
with open(os.environ["CALLS"], "a") as fh:
    fh.write(json.dumps([cmd, args[3:]]) + "\n")
score = json.loads(os.environ["SCORES"])
if cmd == "train":
    out = Path(opt["--out"]); out.mkdir(parents=True)
    (out / "new.bundle").write_text("new model " + os.environ["SCENARIO"])
elif cmd == "evaluate":
    out = Path(opt["--out"]); out.mkdir(parents=True)
    which = "deployed" if opt["--bundle"].endswith("deployed.bundle") else "new"
    (out / "metrics.json").write_text(json.dumps(score[which]))
elif cmd == "push":
    pass
'''


def _run(tmp_path, scenario, scores):
    stand_in = tmp_path / "python-stand-in"
    stand_in.write_text(f"#!{sys.executable}\n" + STAND_IN)
    stand_in.chmod(0o755)
    calls = tmp_path / f"calls-{scenario}.jsonl"
    env = {**os.environ, "PYTHON": str(stand_in), "REAL_PYTHON": sys.executable, "CALLS": str(calls),
           "SCORES": json.dumps(scores), "SCENARIO": scenario, "WORK": str(tmp_path / "work"),
           "DATA": "/data", "HOLDOUT": "/holdout", "KEY": "/k/signing.key", "PUBLIC_KEY": "/k/signing.pub",
           "PUSH_CONFIG": "/k/push.yaml", "CHANNEL": "beta"}
    proc = subprocess.run(["bash", str(RETRAIN / "retrain.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in calls.read_text().splitlines()], proc.stdout


def test_retrain_pushes_only_when_at_least_as_good(tmp_path):
    good = {"macro_roc_auc": 0.8, "recording_top1_accuracy": 0.6}
    calls, out = _run(tmp_path, "first", {"new": good})
    assert [c[0] for c in calls] == ["train", "evaluate", "push"], out
    assert "--channel" in calls[-1][1] and calls[-1][1][calls[-1][1].index("--channel") + 1] == "beta"
    deployed = tmp_path / "work" / "deployed.bundle"
    assert deployed.read_text() == "new model first"

    worse = {"macro_roc_auc": 0.85, "recording_top1_accuracy": 0.5}
    calls, out = _run(tmp_path, "worse", {"new": worse, "deployed": good})
    assert [c[0] for c in calls] == ["train", "evaluate", "evaluate"] and "keep" in out
    assert deployed.read_text() == "new model first"

    calls, out = _run(tmp_path, "as-good", {"new": good, "deployed": good})
    assert [c[0] for c in calls] == ["train", "evaluate", "evaluate", "push"]
    assert deployed.read_text() == "new model as-good"
    # both evaluations ran on the held-out set
    assert all(c[1][c[1].index("--data") + 1] == "/holdout" for c in calls if c[0] == "evaluate")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_verify(tmp_path):
    for name in ("dawnchorus-retrain.service", "dawnchorus-retrain.timer"):
        text = (RETRAIN / name).read_text().replace("/opt/dawnchorus/deploy/retrain/retrain.sh",
                                                    str(RETRAIN / "retrain.sh"))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "dawnchorus-retrain.timer"),
                           str(tmp_path / "dawnchorus-retrain.service")], capture_output=True, text=True)
    problems = [line for line in proc.stderr.splitlines() if "dawnchorus-retrain" in line]
    assert proc.returncode == 0 and not problems, proc.stderr
