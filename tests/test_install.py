"""deploy/install.sh into a scratch root: what it lays down, idempotence, --uninstall."""
from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"


def offline_env() -> dict:
    """This interpreter's packages visible to the scratch virtualenv (which, with --offline,
    sees only the base interpreter's): where the tests run in a virtualenv of their own."""
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    return dict(os.environ, PYTHON=sys.executable, PYTHONPATH=os.pathsep.join(paths))


def install(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = offline_env()
    r = subprocess.run(["bash", str(INSTALL), "--root", str(root), *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One offline install (the virtualenv sees this machine's packages; only dawnchorus goes in)."""
    root = tmp_path_factory.mktemp("root")
    return root, install(root, "--offline")


def test_lays_down_code_venv_config_and_unit(scratch):
    root, r = scratch
    opt = root / "opt/dawnchorus"
    py = opt / "venv/bin/python"
    assert py.is_file() and os.access(py, os.X_OK)
    assert (opt / "src/edge/service/daemon.py").is_file() and (opt / "README.md").is_file()
    unit = root / "etc/systemd/system/dawnchorus-edge.service"
    assert unit.read_text() == (REPO / "systemd/dawnchorus-edge.service").read_text()
    cfg = root / "etc/dawnchorus/config.yaml"
    assert cfg.is_file() and oct(cfg.stat().st_mode & 0o777) == "0o640"
    # the example, with this machine's name as device_id
    ours = [ln for ln in cfg.read_text().splitlines() if not ln.startswith("device_id:")]
    example = [ln for ln in (REPO / "config.example.yaml").read_text().splitlines() if not ln.startswith("device_id:")]
    assert ours == example
    # nothing outside the root was touched: every system change is only reported
    for skipped in ("apt-get install", "useradd", "systemctl daemon-reload", "systemctl enable", "systemctl restart"):
        assert f"skipped (--root): {skipped}" in r.stdout
    # the installed package runs from the virtualenv, not from this checkout
    out = subprocess.run([str(py), "-c", "import edge, sys; print(edge.__file__)"], capture_output=True, text=True,
                         cwd=root, env=offline_env())
    assert out.returncode == 0 and str(opt / "venv") in out.stdout, out.stderr
    chk = subprocess.run([str(py), "-m", "edge", "check-config", str(cfg)], capture_output=True, text=True, cwd=root,
                         env=offline_env())
    assert chk.returncode == 0, chk.stderr


def test_idempotent_keeps_the_config_and_uninstall_keeps_the_data(tmp_path):
    root = tmp_path / "root"
    install(root, "--no-pip")
    cfg = root / "etc/dawnchorus/config.yaml"
    cfg.write_text(cfg.read_text().replace("gain_db: 0.0", "gain_db: 6.0"))
    unit = root / "etc/systemd/system/dawnchorus-edge.service"
    unit.write_text("stale")
    r = install(root, "--no-pip")
    assert "kept the existing" in r.stdout
    assert "gain_db: 6.0" in cfg.read_text()
    assert unit.read_text() == (REPO / "systemd/dawnchorus-edge.service").read_text()
    state = root / "var/lib/dawnchorus"
    state.mkdir(parents=True)
    (state / "detections.db").write_bytes(b"data")
    install(root, "--uninstall")
    assert not unit.exists() and not (root / "opt/dawnchorus").exists()
    assert cfg.exists() and (state / "detections.db").exists()
    install(root, "--uninstall", "--purge")
    assert not cfg.exists() and not state.exists()


def test_refuses_unknown_options(tmp_path):
    r = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
