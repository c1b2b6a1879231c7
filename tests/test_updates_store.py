"""The models directory: atomic installs, the state file, crashes, crash-loop rollback, start-up choice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from edge.contract.bundle import parse_bundle
from edge.config import DEFAULT_BUNDLE, parse_config
from edge.service.modelstore import STATE_NAME, ModelStore, entry_for
from edge.outputs.mqtt.payloads import load_schema
from edge.service.updates import UpdateService, compare_versions, resolve_startup
from fixtures_updates import make_bundle

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, keys, **updates):
    return parse_config({
        "state_dir": str(tmp_path / "state"),
        "model": {"public_key": str(keys.public_path)},
        "updates": {"crash_loop_window_s": 300, "crash_loop_max": 2, **updates},
    })


def _install(store, keys, version):
    data = make_bundle(keys.private, version)
    bundle = parse_bundle(data, keys.public)
    path = store.install(data, bundle)
    store.activate(entry_for(bundle, path))
    return bundle, path


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_install_is_durable_and_state_names_active_and_previous(tmp_path, team_keys):
    store = ModelStore(tmp_path / "models")
    b1, p1 = _install(store, team_keys, "1.0")
    b2, p2 = _install(store, team_keys, "1.1")
    assert p1.read_bytes() != b"" and parse_bundle(p2.read_bytes(), team_keys.public).version == "1.1"
    state = json.loads((tmp_path / "models" / STATE_NAME).read_text())
    assert state["active"]["version"] == "1.1" and state["active"]["file"] == str(p2)
    assert state["previous"]["version"] == "1.0" and state["previous"]["sha256"] == b1.sha256
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp-")]
    _install(store, team_keys, "1.2")  # only active and previous are kept
    assert not p1.exists() and p2.exists()


def test_failed_rename_leaves_old_model_and_no_partial_file(tmp_path, team_keys, monkeypatch):
    cfg = _cfg(tmp_path, team_keys)
    store = ModelStore(cfg.state_dir / "models")
    _install(store, team_keys, "1.0")
    data = make_bundle(team_keys.private, "2.0")
    new = parse_bundle(data, team_keys.public)

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.install(data, new)
    monkeypatch.undo()
    assert [p.suffix for p in store.dir.iterdir() if p.name != STATE_NAME] == [".bundle"]
    running = resolve_startup(cfg, ModelStore(store.dir))
    assert running.bundle.version == "1.0"


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from edge.contract.bundle import parse_bundle
    from edge.service.modelstore import ModelStore, entry_for
    from edge.contract.signing import load_private_key, load_public_key
    from fixtures_updates import make_bundle
    models, priv, pub, version, crash_on = sys.argv[1:6]
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith(crash_on):
            os.kill(os.getpid(), signal.SIGKILL)  # a power cut between write+fsync and rename
        real_replace(src, dst)
    os.replace = replace
    data = make_bundle(load_private_key(priv), version)
    bundle = parse_bundle(data, load_public_key(pub))
    store = ModelStore(models)
    path = store.install(data, bundle)
    store.activate(entry_for(bundle, path))
""")


@pytest.mark.parametrize("crash_on", [".bundle", STATE_NAME])
def test_crash_between_write_and_rename_leaves_a_loadable_model(tmp_path, team_keys, crash_on):
    cfg = _cfg(tmp_path, team_keys)
    models = cfg.state_dir / "models"
    _install(ModelStore(models), team_keys, "1.0")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(models), str(team_keys.private_path),
                           str(team_keys.public_path), "2.0", crash_on], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = [p for p in models.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the crash should have left the temporary file behind"
    store = ModelStore(models)
    running = resolve_startup(cfg, store)
    assert running.bundle.version == "1.0" and running.origin == "active"
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp-")]
    assert [p.name for p in models.glob("*.bundle")] == [Path(store.active["file"]).name]


def test_crash_loop_after_swap_rolls_back(tmp_path, team_keys):
    cfg = _cfg(tmp_path, team_keys, crash_loop_max=2)
    clock = Clock()
    models = cfg.state_dir / "models"
    _install(ModelStore(models, clock=clock), team_keys, "1.0")
    ModelStore(models, clock=clock).mark_healthy()
    b2, _ = _install(ModelStore(models, clock=clock), team_keys, "2.0")  # the swap: this run counts
    for crash in (1, 2):
        clock.t += 20
        running = resolve_startup(cfg, ModelStore(models, clock=clock))  # restart after a crash
        assert running.bundle.version == ("2.0" if crash < 2 else "1.0"), crash
    store = ModelStore(models, clock=clock)
    assert store.active["version"] == "1.0" and store.previous is None
    assert store.is_refused("2.0", b2.sha256)
    assert "crash loop" in store.state["rollbacks"][-1]["reason"]
    report = UpdateService(cfg, store, running, None, public_key=team_keys.public).report()
    jsonschema.validate(report, load_schema("model"))
    assert report["active"]["version"] == "1.0" and report["last_rollback"]["from"]["version"] == "2.0"


def test_clean_stops_and_old_crashes_do_not_count(tmp_path, team_keys):
    cfg = _cfg(tmp_path, team_keys, crash_loop_max=2, crash_loop_window_s=60)
    clock = Clock()
    models = cfg.state_dir / "models"
    _install(ModelStore(models, clock=clock), team_keys, "1.0")
    _install(ModelStore(models, clock=clock), team_keys, "2.0")
    for _ in range(5):  # stopped cleanly (reboots) before reaching healthy
        clock.t += 5
        store = ModelStore(models, clock=clock)
        assert resolve_startup(cfg, store).bundle.version == "2.0"
        store.record_clean_stop()
    for _ in range(5):  # crashes, each more than the window after the one before
        clock.t += 61
        assert resolve_startup(cfg, ModelStore(models, clock=clock)).bundle.version == "2.0"


#: a daemon start that crashes at once: prints the version it started and the wall-clock time, then exits 3
CRASHING_START = textwrap.dedent("""
    import os, sys, time
    from edge.config import load_config
    from edge.service.modelstore import ModelStore
    from edge.service.updates import models_dir_for, resolve_startup
    cfg = load_config(sys.argv[1])
    running = resolve_startup(cfg, ModelStore(models_dir_for(cfg)))
    print(running.bundle.version, int(time.time()), flush=True)
    os._exit(3)  # the daemon dies soon after start
""")


def crash_loop_setup(tmp_path, keys, **detection_updates) -> Path:
    """A config file whose models dir holds 1.0 (previous) and 2.0 (active); returns the config's path."""
    cfg_path = tmp_path / "config.yaml"
    cfg = _cfg(tmp_path, keys, **detection_updates)
    cfg_path.write_text(json.dumps(json.loads(cfg.model_dump_json())))
    models = cfg.state_dir / "models"
    _install(ModelStore(models), keys, "1.0")
    _install(ModelStore(models), keys, "2.0")
    return cfg_path


def test_crash_loop_with_real_process_crashes(tmp_path, team_keys):
    """The counter survives real crashing processes (os._exit), not just new objects."""
    cfg_path = crash_loop_setup(tmp_path, team_keys, crash_loop_max=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = [subprocess.run([sys.executable, "-c", CRASHING_START, str(cfg_path)], env=env, capture_output=True,
                           text=True).stdout.split()[0] for _ in range(3)]
    assert seen == ["2.0", "1.0", "1.0"]


def test_startup_falls_back_active_previous_config_default(tmp_path, team_keys):
    cfg = _cfg(tmp_path, team_keys)
    models = cfg.state_dir / "models"
    _, p1 = _install(ModelStore(models), team_keys, "1.0")
    _, p2 = _install(ModelStore(models), team_keys, "2.0")
    p2.write_bytes(p2.read_bytes()[:1000])  # the active file damaged (disk error)
    running = resolve_startup(cfg, ModelStore(models))
    assert (running.bundle.version, running.origin) == ("1.0", "previous")
    store = ModelStore(models)
    assert store.active["version"] == "1.0" and "failed to load" in store.state["rollbacks"][-1]["reason"]

    p1.unlink()  # the previous one gone too: the configured bundle, then the bundled default
    conf_bundle = tmp_path / "conf.bundle"
    conf_bundle.write_bytes(make_bundle(team_keys.private, "0.5"))
    cfg2 = cfg.model_copy(update={"model": cfg.model.model_copy(update={"bundle": conf_bundle})})
    running = resolve_startup(cfg2, ModelStore(models))
    assert (running.bundle.version, running.origin) == ("0.5", "config")
    conf_bundle.write_bytes(b"garbage")
    running = resolve_startup(cfg2, ModelStore(models))
    assert running.origin == "default" and running.path == DEFAULT_BUNDLE


def test_corrupt_state_file_is_kept_aside(tmp_path, team_keys):
    cfg = _cfg(tmp_path, team_keys)
    models = cfg.state_dir / "models"
    models.mkdir(parents=True)
    (models / STATE_NAME).write_text("{not json")
    running = resolve_startup(cfg, ModelStore(models))
    assert running.origin == "default"
    assert (models / "state.corrupt").read_text() == "{not json"


@pytest.mark.parametrize("a,b,want", [("1.10", "1.9", 1), ("2024.06.01", "2024.5.30", 1), ("1.0", "1.0", 0),
                                      ("0.0.1", "0.1", -1), ("20240601-2", "20240601-10", -1)])
def test_version_order(a, b, want):
    assert compare_versions(a, b) == want


def test_swapped_model_becomes_healthy_only_with_progress(tmp_path, team_keys):
    import threading
    import time

    cfg = _cfg(tmp_path, team_keys, crash_loop_window_s=0.3)
    store = ModelStore(cfg.state_dir / "models")
    _install(store, team_keys, "1.0")
    _install(store, team_keys, "2.0")  # just swapped: not healthy yet
    running = resolve_startup(cfg, store)
    windows = {"n": 0}
    svc = UpdateService(cfg, store, running, None, public_key=team_keys.public, stop_event=threading.Event(),
                        progress=lambda: windows["n"])
    svc.start()
    try:
        time.sleep(1.5)
        assert not store.state["healthy"], "no windows processed: not healthy"
        windows["n"] = 5
        deadline = time.monotonic() + 10
        while not store.state["healthy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.state["healthy"] and store.state["starts"] == []
    finally:
        svc.stop()
    assert json.loads((store.dir / STATE_NAME).read_text())["healthy"] is True
