"""The live daemon (``python -m edge run``) with MQTT on: real capture path, real store, real broker."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import yaml

from edge.outputs.store import Store
from fixtures_mqtt import REPO
from fixtures_replay import TONES, make_tone_bundle, noise, tone_bursts
from mqtt_helpers import start_publisher, validate

SR = 32000


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    d = tmp_path_factory.mktemp("tones")
    return make_tone_bundle(d), d / "signing.pub"


def _program() -> np.ndarray:
    return np.concatenate([tone_bursts(1200.0, 8), noise(4), tone_bursts(7000.0, 8, seed=3), noise(5)])


def _run(tmp_path, alsa_device, tones, broker_port: int) -> tuple[subprocess.CompletedProcess, list[dict], str]:
    bundle, key = tones
    x = _program()
    env, name = alsa_device(x)
    state = tmp_path / "state"
    cfg = {"device_id": "live1", "state_dir": str(state), "store": {"path": str(state / "detections.db")},
           "audio": {"device": name, "ring_buffer_s": 60}, "updates": {"enabled": False},
           "model": {"bundle": str(bundle), "public_key": str(key)},
           "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.2,
                    "reconnect_max_s": 1}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(path), "--duration", str(len(x) / SR)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
    con = sqlite3.connect(state / "detections.db")
    con.row_factory = sqlite3.Row
    rows = [dict(x) for x in con.execute("SELECT * FROM detections ORDER BY seq")]
    con.close()
    assert {d["label"] for d in rows} == {k for k, v in TONES.items() if v in (1200.0, 7000.0)}
    return r, rows, str(state / "detections.db")


def test_live_daemon_streams_every_detection(tmp_path, alsa_device, tones, mqtt_broker, make_collector):
    col = make_collector(mqtt_broker, ["dawnchorus/live1/#"])
    col.wait_subscribed()
    r, rows, _ = _run(tmp_path, alsa_device, tones, mqtt_broker.port)
    assert all(d["published_utc"] for d in rows), "every stored detection acknowledged by the broker"
    got = [validate("detection", p) for p in col.on("dawnchorus/live1/detections")]
    assert sorted(m["id"] for m in got) == sorted(d["id"] for d in rows)
    status = [validate("status", p) for p in col.on("dawnchorus/live1/status")]
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    assert status[0]["health"]["model_version"] == "1.0.0" and "windows_processed" in status[0]["health"]


def test_live_daemon_with_the_broker_down_stores_everything_and_sends_it_later(
        tmp_path, alsa_device, tones, make_broker, make_collector):
    broker = make_broker(start=False)
    r, rows, db = _run(tmp_path, alsa_device, tones, broker.port)
    assert rows and not any(d["published_utc"] for d in rows)
    assert "cannot reach broker" in r.stderr
    # the next start (here: just the publisher on the same store) sends the backlog
    broker.start()
    col = make_collector(broker, ["dawnchorus/live1/detections"])
    col.wait_subscribed()
    store = Store(db)
    pub = start_publisher(broker, store, "live1")
    try:
        assert col.wait_for(lambda c: sorted(c.ids("dawnchorus/live1/detections")) == sorted(d["id"] for d in rows),
                            20)
    finally:
        pub.stop()
    assert store.outbox_depth() == 0
