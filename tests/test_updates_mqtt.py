"""Model updates end to end against a real mosquitto: push, verify, swap, refuse, report."""
from __future__ import annotations

import json
import threading

import jsonschema
import paho.mqtt.publish as mqtt_publish
import pytest

from edge.contract.bundle import parse_bundle
from edge.config import parse_config
from edge.service.modelstore import ModelStore
from edge.outputs.mqtt.payloads import load_schema
from edge.outputs.mqtt.publisher import Publisher
from edge.detection.pipeline import Pipeline
from edge.outputs.store import Store
from edge.outputs.mqtt.topics import Topics
from edge.service.updates import UpdateService, models_dir_for, resolve_startup
from fixtures_mqtt import wait_until
from fixtures_updates import Feeder, bad_bundles, clip_samples, make_bundle
from trainer.push import push_bytes, topic_for


class Device:
    """The parts the daemon wires for updates: model store, pipeline, store, publisher, update service."""

    def __init__(self, tmp_path, broker, keys, start_version="1.0", max_bundle_mb=32, **updates):
        start = tmp_path / "start.bundle"
        start.write_bytes(make_bundle(keys.private, start_version))
        self.cfg = parse_config({
            "device_id": "rec1", "state_dir": str(tmp_path / "state"),
            "model": {"bundle": str(start), "public_key": str(keys.public_path), "max_bundle_mb": max_bundle_mb},
            "store": {"path": str(tmp_path / "state" / "detections.db")},
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port, "reconnect_min_s": 0.2},
            "updates": {"channel": "stable", **updates},
        })
        self.stop_event = threading.Event()
        self.models = ModelStore(models_dir_for(self.cfg))
        running = resolve_startup(self.cfg, self.models)
        self.pipeline = Pipeline(running.bundle, running.model, device_id=self.cfg.device_id)
        self.store = Store(self.cfg.store.path)
        self.topics = Topics(self.cfg.mqtt.prefix, self.cfg.device_id)
        self.mqtt = Publisher.from_config(self.cfg, self.store, stop=self.stop_event)
        self.updates = UpdateService(self.cfg, self.models, running, self.pipeline, publisher=self.mqtt,
                                     topics=self.topics, stop_event=self.stop_event,
                                     progress=lambda: self.pipeline.stats["windows"])
        sr = running.bundle.frontend.sample_rate
        self.feeder = Feeder(self.pipeline, self.store, clip_samples(sr), sr)

    def start(self):
        self.mqtt.start()
        self.updates.start()
        self.feeder.start()
        assert self.mqtt.wait_connected(10)
        return self

    def stop(self):
        dets = self.feeder.stop()
        self.updates.stop()
        self.mqtt.stop()
        return dets


@pytest.fixture
def device(tmp_path, mqtt_broker, team_keys):
    made = []

    def make(**kw):
        d = Device(tmp_path, mqtt_broker, team_keys, **kw).start()
        made.append(d)
        return d

    yield make
    for d in made:
        if not d.stop_event.is_set():
            d.stop()


REPORT = jsonschema.Draft202012Validator(load_schema("model"))


def _check_reports(collector, topic):
    reports = collector.json_on(topic)
    for r in reports:
        REPORT.validate(r)
    return reports


def test_good_push_swaps_model_without_losing_audio(device, mqtt_broker, make_collector, team_keys):
    dev = device()
    topic = dev.topics.model
    reports = make_collector(mqtt_broker, [topic])
    reports.wait_subscribed()
    assert reports.wait_for(lambda c: any(r["active"]["version"] == "1.0" for r in c.json_on(topic)), 10)
    dev.feeder.wait_blocks(10)

    new = make_bundle(team_keys.private, "2.0")
    res = push_bytes(new, dev.cfg, topic_for(dev.cfg, None, None), team_keys.public, timeout=20)
    assert res.verified and res.topic == "dawnchorus/models/stable"
    assert reports.wait_for(lambda c: any((r["last_update"] or {}).get("result") == "accepted"
                                          for r in c.json_on(topic)), 30)
    dev.feeder.wait_blocks(16)  # 8 s of audio with the new model
    dets = dev.stop()

    sha2 = parse_bundle(new, team_keys.public).sha256
    rows = dev.store.detections()
    by_version = {v: [r for r in rows if r["model_version"] == v] for v in ("1.0", "2.0")}
    assert by_version["1.0"] and by_version["2.0"] and len(rows) == len(by_version["1.0"]) + len(by_version["2.0"])
    assert {r["model_sha256"] for r in by_version["2.0"]} == {sha2}
    # no audio lost: per species, the new model's first window follows the old model's last by one hop
    window, hop = dev.pipeline.bundle.frontend.window_s, dev.pipeline.hop_s
    label = rows[0]["label"]
    old = [d for d in dets if d.label == label and d.model_version == "1.0"]
    new_ = [d for d in dets if d.label == label and d.model_version == "2.0"]
    last_old_start = max(d.end_offset_s for d in old) - window
    first_new_start = min(d.offset_s for d in new_)
    assert first_new_start == pytest.approx(last_old_start + hop, abs=1e-3)
    assert min(d.offset_s for d in dets if d.model_version == "2.0") > max(d.offset_s for d in dets if d.model_version == "1.0")

    last = _check_reports(reports, topic)[-1]
    assert last["active"]["version"] == "2.0" and last["active"]["sha256"] == sha2
    assert last["previous"]["version"] == "1.0"
    assert last["last_update"]["origin"] == "dawnchorus/models/stable"
    state = json.loads((models_dir_for(dev.cfg) / "state.json").read_text())
    assert state["active"]["version"] == "2.0" and state["previous"]["version"] == "1.0"
    # a newcomer gets the report retained
    late = make_collector(mqtt_broker, [topic])
    assert late.wait_for(lambda c: any(r["active"]["version"] == "2.0" for r in c.json_on(topic)), 10)


def test_each_bad_bundle_is_refused_and_the_old_model_keeps_detecting(device, mqtt_broker, make_collector,
                                                                     team_keys):
    dev = device()
    topic = dev.topics.model
    reports = make_collector(mqtt_broker, [topic])
    reports.wait_subscribed()
    for kind, (payload, phrase) in bad_bundles(team_keys.private, team_keys.other, "3.0").items():
        seen = len(reports.on(topic))
        fed = dev.feeder.blocks_fed
        mqtt_publish.single(dev.topics.model_set, payload, qos=1, retain=True, hostname=mqtt_broker.host,
                            port=mqtt_broker.port)
        assert reports.wait_for(lambda c: len(c.on(topic)) > seen and
                                (c.json_on(topic)[-1]["last_update"] or {}).get("received_utc"), 20), kind
        upd = reports.json_on(topic)[-1]["last_update"]
        assert upd["result"] == "refused" and phrase in upd["reason"], (kind, upd)
        assert upd["origin"] == dev.topics.model_set
        assert dev.pipeline.bundle.version == "1.0"
        dev.feeder.wait_blocks(2)  # still detecting
        assert dev.feeder.blocks_fed > fed
    dets = dev.stop()
    assert dets and {d.model_version for d in dets} == {"1.0"}
    assert not list(models_dir_for(dev.cfg).glob("*.bundle"))
    assert _check_reports(reports, topic)[-1]["active"]["version"] == "1.0"


def test_oversized_bundle_refused_with_a_report(device, mqtt_broker, make_collector, team_keys):
    dev = device(max_bundle_mb=3)  # the real model's bundle is about 2.8 MB
    topic = dev.topics.model
    reports = make_collector(mqtt_broker, [topic])
    reports.wait_subscribed()
    big = make_bundle(team_keys.private, "2.0", padding_bytes=1_000_000)
    mqtt_publish.single(dev.topics.model_set, big, qos=1, hostname=mqtt_broker.host, port=mqtt_broker.port)
    # the device's first report may still be on its way: wait for the one that tells of the refusal
    assert reports.wait_for(lambda c: any((r["last_update"] or {}).get("result") == "refused"
                                          for r in _check_reports(c, topic)), 20)
    assert "exceeds the limit" in reports.json_on(topic)[-1]["last_update"]["reason"]
    assert dev.pipeline.bundle.version == "1.0"


def test_same_version_ignored_older_refused_unless_allowed(device, team_keys):
    dev = device(start_version="2.0")
    again = dev.updates.process(make_bundle(team_keys.private, "2.0"), "test")
    assert again.result == "ignored"
    older = dev.updates.process(make_bundle(team_keys.private, "1.5"), "test")
    assert older.result == "refused" and "older" in older.reason
    assert dev.pipeline.bundle.version == "2.0"
    assert [r.result for r in dev.updates.results] == ["ignored", "refused"]
    assert dev.models.state["last_update"]["version"] == "1.5"  # an ignored bundle does not replace it


def test_downgrade_allowed_by_config(device, team_keys):
    dev = device(start_version="2.0", allow_downgrade=True)
    dev.feeder.wait_blocks(10)
    res = dev.updates.process(make_bundle(team_keys.private, "1.5"), "test")
    assert res.result == "accepted", res.reason
    dev.feeder.wait_blocks(12)
    dets = dev.stop()
    assert {d.model_version for d in dets} == {"2.0", "1.5"}


def test_push_refuses_bundles_that_do_not_verify(mqtt_broker, make_collector, team_keys, tmp_path):
    cfg = parse_config({"mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port}})
    sink = make_collector(mqtt_broker, ["dawnchorus/#"])
    sink.wait_subscribed()
    from trainer.push import PushError

    with pytest.raises(PushError, match="does not verify"):
        push_bytes(make_bundle(team_keys.other, "9.0"), cfg, topic_for(cfg, None, None), team_keys.public)
    with pytest.raises(PushError, match="not a bundle"):
        push_bytes(b"not a bundle", cfg, topic_for(cfg, None, None), team_keys.public)
    res = push_bytes(make_bundle(team_keys.private, "9.0"), cfg, topic_for(cfg, None, "rec7"), team_keys.public)
    assert res.topic == "dawnchorus/rec7/model/set"
    assert sink.wait_for(lambda c: c.on("dawnchorus/rec7/model/set"), 10)
    assert [t for t, _, _ in sink.messages] == ["dawnchorus/rec7/model/set"]


def test_push_says_when_the_broker_limit_is_too_small(make_broker, team_keys):
    from trainer.push import PushError

    data = make_bundle(team_keys.private, "1.0")
    small = make_broker("small", extra="max_packet_size 100000")
    cfg = parse_config({"mqtt": {"host": small.host, "port": small.port}})
    with pytest.raises(PushError, match=r"at most 100000 bytes.*max_packet_size"):
        push_bytes(data, cfg, topic_for(cfg, None, None), team_keys.public, timeout=10)
    old = make_broker("old", extra="message_size_limit 100000")
    cfg = parse_config({"mqtt": {"host": old.host, "port": old.port, "protocol": "3.1.1"}})
    with pytest.raises(PushError, match="message_size_limit"):
        push_bytes(data, cfg, topic_for(cfg, None, None), team_keys.public, timeout=10)


def test_push_without_read_access_is_acknowledged_but_not_verified(make_broker, team_keys, tmp_path):
    acl = tmp_path / "push.acl"
    acl.write_text("topic write dawnchorus/models/#\n")  # anonymous: may push, may not read back
    broker = make_broker("acl", acl_file=acl)
    cfg = parse_config({"mqtt": {"host": broker.host, "port": broker.port}})
    res = push_bytes(make_bundle(team_keys.private, "1.0"), cfg, topic_for(cfg, None, None), team_keys.public,
                     timeout=20)
    assert res.verified is False


def test_example_acl_lets_the_trainer_push_and_read_back(make_broker, team_keys, tmp_path):
    """deploy/mosquitto/dawnchorus.acl: the trainer account pushes to a channel and to one device,
    and reads each retained bundle back (verified); a device account may do neither."""
    import shutil

    from fixtures_mqtt import REPO, make_password_file
    from trainer.push import PushError

    acl = tmp_path / "dawnchorus.acl"
    shutil.copy(REPO / "deploy" / "mosquitto" / "dawnchorus.acl", acl)
    pw = make_password_file(tmp_path / "passwd", {"trainer": "pwt", "rec7": "pw7"})
    broker = make_broker("example-acl", password_file=pw, acl_file=acl)
    (tmp_path / "pwt").write_text("pwt")
    (tmp_path / "pw7").write_text("pw7")
    base = {"host": broker.host, "port": broker.port, "protocol": "5"}
    trainer = parse_config({"mqtt": {**base, "username": "trainer", "password_file": str(tmp_path / "pwt")}})
    for device in (None, "rec7"):
        res = push_bytes(make_bundle(team_keys.private, "5.0"), trainer, topic_for(trainer, None, device),
                         team_keys.public, timeout=20)
        assert res.verified is True, res.topic
    device = parse_config({"mqtt": {**base, "username": "rec7", "password_file": str(tmp_path / "pw7")}})
    with pytest.raises(PushError):
        push_bytes(make_bundle(team_keys.private, "6.0"), device, topic_for(device, None, None), team_keys.public,
                   timeout=20)


def test_push_command_line(mqtt_broker, team_keys, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "push.yaml"
    cfg.write_text(f"mqtt:\n  host: {mqtt_broker.host}\n  port: {mqtt_broker.port}\n"
                   f"model:\n  public_key: {team_keys.public_path}\n")
    good, bad = tmp_path / "good.bundle", tmp_path / "other.bundle"
    good.write_bytes(make_bundle(team_keys.private, "4.0"))
    bad.write_bytes(make_bundle(team_keys.other, "4.0"))

    def push(*args):
        return subprocess.run([sys.executable, "-m", "trainer", "push", *args, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=120)

    refused = push(str(bad))
    assert refused.returncode == 1 and "refusing to push" in refused.stderr and "does not verify" in refused.stderr
    ok = push(str(good), "--device", "rec9")
    assert ok.returncode == 0, ok.stderr
    assert "dawnchorus/rec9/model/set" in ok.stdout and "acknowledged, read back" in ok.stdout
