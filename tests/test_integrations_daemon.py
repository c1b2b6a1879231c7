"""The live daemon with every integration on: retention at start, HA discovery, notifications (one URL failing).

Real capture (ALSA file device), real store, real mosquitto, real Apprise to a local HTTP receiver and to a
closed port: the failing notifier must cost no detection.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import yaml

from edge.outputs.store import Store
from fixtures_mqtt import REPO
from fixtures_replay import TONES, make_tone_bundle, noise, tone_bursts
from mqtt_helpers import make_detections, validate
from test_integrations_alerts import Receiver, closed_port_url
from test_integrations_discovery import config_topics, retained

pytest.importorskip("apprise")
pytestmark = pytest.mark.slow
SR = 32000


def test_daemon_with_retention_discovery_and_a_failing_notifier(tmp_path, alsa_device, mqtt_broker):
    bundle = make_tone_bundle(tmp_path / "bundle")
    x = np.concatenate([tone_bursts(1200.0, 6), noise(3), tone_bursts(7000.0, 6, seed=3), noise(4)])
    env, name = alsa_device(x)
    state = tmp_path / "state"
    db = state / "detections.db"
    store = Store(db)
    old = [dataclasses.replace(d, device_id="live1", created_utc=(datetime.now(timezone.utc) - timedelta(days=40))
                               .strftime("%Y-%m-%dT%H:%M:%S.000Z")) for d in make_detections(3, "live1")]
    store.insert(old)
    assert store.mark_published([d.id for d in old]) == 3 and store.count() == 3
    store.close()
    receiver = Receiver()
    cfg = {"device_id": "live1", "state_dir": str(state), "store": {"path": str(db), "keep_days": 30},
           "audio": {"device": name, "ring_buffer_s": 60}, "updates": {"enabled": False},
           "model": {"bundle": str(bundle), "public_key": str(tmp_path / "bundle" / "signing.pub")},
           "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mqtt_broker.port, "reconnect_min_s": 0.2,
                    "reconnect_max_s": 1, "homeassistant": {"enabled": True}},
           "notify": {"enabled": True, "urls": [closed_port_url(), receiver.url]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(path), "--duration",
                            str(len(x) / SR)], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    finally:
        receiver.close()
    assert r.returncode == 0, r.stderr[-4000:]
    store = Store(db)
    rows = store.detections(order="seq")
    labels = {k for k, v in TONES.items() if v in (1200.0, 7000.0)}
    # every detection stored (and published) although one notifier fails; the 40-day-old ones pruned at start
    assert {d["label"] for d in rows} == labels and all(d["published_utc"] for d in rows)
    assert not {d.id for d in old} & {d["id"] for d in rows}, r.stderr[-3000:]
    # the working notifier got the first detection of each species today
    titles = sorted(b["title"] for b in receiver.bodies)
    assert titles == sorted(f"dawnchorus: New today: {d['common_name'] or d['label'].replace('_', ' ')}"
                            for d in {d["label"]: d for d in rows}.values())
    assert "could not deliver" in r.stderr
    # Home Assistant finds the entities and the last detection retained
    kept = retained(mqtt_broker, ["homeassistant/#", "dawnchorus/+/last_detection"])
    assert set(config_topics("live1")) <= set(kept)
    for t in config_topics("live1"):
        validate("ha_discovery", kept[t])
    newest = max(rows, key=lambda d: d["start_utc"])
    assert json.loads(kept["dawnchorus/live1/last_detection"])["id"] == newest["id"]
