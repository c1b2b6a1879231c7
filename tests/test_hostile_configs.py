"""Hostile configuration files through real ``python -m edge check-config`` and ``python -m edge run``.

Each must be refused with exit status 2 (the configuration-error status,
which systemd does not restart on: see deploy/dawnchorus.service), a short
message that names the file and the problem, and no traceback. ``run`` and
``check-config`` must agree: the problems only the model reveals (an overlap
that does not fit its window, species it lacks) are found by both.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from hostile_inputs import CONFIG_CASES, NEEDS_BUNDLE, REPO, write_config

MAX_MESSAGE = 8000  # characters on stderr, whatever the input


def edge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, capture_output=True, timeout=timeout)


def _check(r: subprocess.CompletedProcess, path, phrase: str) -> None:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(err) < MAX_MESSAGE, len(err)
    assert str(path) in err and phrase in err, err[-2000:]
    assert all(len(ln) <= 400 for ln in err.splitlines() if str(path) in ln)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.name for c in CONFIG_CASES])
def test_check_config_refuses(case, tmp_path):
    path = write_config(tmp_path, case, tmp_path / "state")
    _check(edge("check-config", str(path)), path, case.phrase)


RUN_CASES = [c for c in CONFIG_CASES if c.name in NEEDS_BUNDLE | {"duplicate nested key", "alias bomb", "latin-1 text"}]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.name for c in RUN_CASES])
def test_run_exits_2_without_a_traceback(case, tmp_path):
    path = write_config(tmp_path, case, tmp_path / "state")
    r = edge("run", "--config", str(path))
    _check(r, path, case.phrase.split(" ")[0] if case.name in NEEDS_BUNDLE else case.phrase)


def test_trainer_config_uses_the_same_loader(tmp_path):
    from trainer.config import TrainConfigError, load_train_config

    p = tmp_path / "t.yaml"
    p.write_text("train: {epochs: 1}\ntrain: {epochs: 2}\n")
    with pytest.raises(TrainConfigError, match="'train' is given twice"):
        load_train_config(p)
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(TrainConfigError, match="not UTF-8"):
        load_train_config(p)


def test_good_config_still_checks(tmp_path):
    p = tmp_path / "good.yaml"
    # a few aliases are fine: only their count and expansion are bounded
    p.write_text("device_id: rec1\nmodel: {overlap_s: 1.5}\ndetection:\n  include: &sp [Todus_mexicanus]\n"
                 "  exclude: []\n  thresholds: {Todus_mexicanus: 0.4}\n")
    r = edge("check-config", str(p))
    assert r.returncode == 0, r.stderr
    assert b"checked against" in r.stdout
