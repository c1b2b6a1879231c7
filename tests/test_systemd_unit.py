"""The systemd unit: ``systemd-analyze verify`` and its sandbox exposure.

``verify`` wants the ExecStart binary and the units it orders against to
exist, so it runs against a scratch root that deploy/install.sh filled
(the real virtualenv python at /opt/dawnchorus/venv/bin/python) plus a copy
of this machine's own system units (sysinit.target, sound.target, ...).
Nothing in the unit is rewritten for the check.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "dawnchorus-edge.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            out.setdefault(m[1], []).append(m[2])
    return out


def test_unit_has_the_required_settings():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert float(d["WatchdogSec"][0]) >= 30
    assert d["Restart"] == ["on-failure"] and d["StartLimitBurst"] and d["StartLimitIntervalSec"]
    assert d["RestartPreventExitStatus"] == ["2"]  # configuration errors do not loop
    assert d["User"] == ["dawnchorus"] and d["SupplementaryGroups"] == ["audio"]
    assert d["StateDirectory"] == ["dawnchorus"] and d["ConfigurationDirectory"] == ["dawnchorus"]
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("DevicePolicy", "closed"), ("ProtectHome", "yes")):
        assert d[key] == [value], key
    assert d["DeviceAllow"] == ["char-alsa rw"]
    assert d["ExecStart"][0].startswith("/opt/dawnchorus/venv/bin/python -m edge run --config /etc/dawnchorus/")
    # the daemon keeps its state where the unit lets it write
    assert "/var/lib/dawnchorus" in (REPO / "config.example.yaml").read_text()


@needs_analyze
def test_systemd_analyze_verify(tmp_path):
    if not SYSTEM_UNITS.is_dir():
        pytest.skip("no system units to verify against")
    root = tmp_path / "root"
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(["bash", str(REPO / "deploy/install.sh"), "--root", str(root), "--no-pip"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    unit = root / "etc/systemd/system/dawnchorus-edge.service"
    v = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert v.returncode == 0 and not v.stderr.strip(), v.stderr
    # and it does fail on a broken unit: the check can catch something
    bad = root / "etc/systemd/system/dawnchorus-bad.service"
    bad.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy").replace(
        "ExecStart=/opt/dawnchorus/venv/bin/python", "ExecStart=/opt/dawnchorus/venv/bin/nosuch"))
    v = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert v.returncode != 0 and "nosuch" in v.stderr


@needs_analyze
def test_security_exposure_is_low():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m[1]) <= 2.0, r.stdout
