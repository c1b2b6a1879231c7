"""Configuration checks for the daemon: ``check-config``, ``run`` refusing bad files, ``devices``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def edge(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_example_config_is_valid():
    r = edge("check-config", str(REPO / "config.example.yaml"))
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "audio from the system default input" in r.stdout


@pytest.mark.parametrize("cfg, key, words", [
    ({"audio": {"gain_db": 100}}, "audio.gain_db", ["less than or equal to 60", "100"]),
    ({"audio": {"chanels": 2}}, "audio.chanels", ["unknown key"]),
    ({"audio": {"channels": 2, "channel": 2}}, "audio.channel", ["allowed 0..1"]),
    ({"audio": {"device": ""}}, "audio.device", ["index", "name"]),
    ({"audio": {"sample_rate": 1000}}, "audio.sample_rate", ["8000", "1000"]),
    ({"audio": {"retry_initial_s": 10, "retry_max_s": 2}}, "audio.retry_max_s", ["retry_initial_s"]),
    ({"clips": {"max_disk_mb": 0}}, "clips.max_disk_mb", ["greater than 0"]),
    ({"device_id": "my recorder!"}, "device_id", ["pattern"]),
    ({"status_interval_s": 0}, "status_interval_s", ["greater than or equal to 1"]),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, cfg, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for args in (("check-config", str(path)), ("run", "--config", str(path))):
        r = edge(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        line = next((ln for ln in r.stderr.splitlines() if ln.strip().startswith(key + ":")), None)
        assert line is not None, r.stderr
        for w in words:
            assert w in line, line


def test_unreadable_and_non_yaml_configs(tmp_path):
    r = edge("check-config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("audio: [unclosed\n")
    r = edge("run", "--config", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_devices_lists_the_alsa_test_device(alsa_device):
    env, name = alsa_device(np.zeros(32000, np.float32), rate=48000)
    r = edge("devices", "--json", "--rates", env=env)
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)
    mine = [d for d in devices if d["name"] == name]
    assert len(mine) == 1 and mine[0]["channels"] >= 1 and 32000 in mine[0]["rates"]
    table = edge("devices", env=env)
    assert name in table.stdout and "default Hz" in table.stdout
