"""``python -m edge replay --mqtt``: the replay's detections reach the broker through the store's outbox."""
from __future__ import annotations

import subprocess
import sys

import yaml

from edge.outputs.store import Store
from fixtures_mqtt import REPO
from mqtt_helpers import validate


def test_replay_with_mqtt_publishes_every_stored_detection(tmp_path, mqtt_broker, make_collector):
    col = make_collector(mqtt_broker, ["dawnchorus/+/detections", "dawnchorus/+/status"])
    col.wait_subscribed()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump({"device_id": "replay1", "location": {"name": "test site"},
                                   "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port,
                                            "max_backlog_rate": 500}}))
    db = tmp_path / "d.db"
    run = subprocess.run([sys.executable, "-m", "edge", "replay", "--config", str(cfg), "--db", str(db), "--mqtt",
                          "--no-progress", "--format", "csv", "--out", str(tmp_path / "out.csv")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    store = Store(db)
    rows = store.detections()
    assert rows, "the demo recording should give detections"
    assert store.outbox_depth() == 0
    got = [validate("detection", p) for p in col.on("dawnchorus/replay1/detections")]
    assert {m["id"] for m in got} == {r["id"] for r in rows}
    assert all(m["location"]["name"] == "test site" for m in got)
    # the replay said goodbye: the retained status ends offline
    assert col.json_on("dawnchorus/replay1/status")[-1]["state"] == "offline"


def test_replay_mqtt_needs_a_config(tmp_path):
    run = subprocess.run([sys.executable, "-m", "edge", "replay", "--db", str(tmp_path / "d.db"), "--mqtt"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--mqtt needs --config" in run.stderr
