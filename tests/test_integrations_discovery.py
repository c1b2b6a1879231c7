"""Home Assistant MQTT discovery against a real mosquitto: current conventions, removal, retained last detection."""
from __future__ import annotations

import copy
import json
import uuid

import jsonschema
import pytest

from edge.outputs.mqtt.discovery import STATE_FILE, configs, entity_slug
from edge.outputs.mqtt.payloads import load_schema
from edge.outputs.mqtt.publisher import Publisher
from edge.outputs.mqtt.topics import Topics
from edge.outputs.store import Store
from fixtures_mqtt import Collector
from mqtt_helpers import make_detections, mqtt_config, unique_client, validate, store_then_publish

SCHEMA = jsonschema.Draft202012Validator(load_schema("ha_discovery"))
KEYS = ("last_species", "last_detection", "detections_count", "outbox_depth", "no_signal")


def config_topics(device_id: str) -> list[str]:
    node = Topics("dawnchorus", device_id).ha_node_id
    return [f"homeassistant/{'binary_sensor' if k == 'no_signal' else 'sensor'}/{node}/{k}/config" for k in KEYS]


def retained(broker, patterns: list[str]) -> dict[str, bytes]:
    """What the broker keeps retained under ``patterns``, as a new subscriber (HA after a restart) sees it.

    A marker published after subscribing arrives after the retained messages, so no sleep is needed.
    """
    marker = f"test/marker/{uuid.uuid4().hex}"
    col = Collector(broker, [*patterns, marker], persistent=False)
    try:
        col.wait_subscribed()
        import paho.mqtt.publish as publish

        publish.single(marker, b"x", qos=1, hostname=broker.host, port=broker.port)
        assert col.wait_for(lambda c: c.on(marker), 10)
        with col._lock:
            return {t: p for t, p, is_retained in col.messages if is_retained}
    finally:
        col.close()


def publisher(broker, store, device_id: str, state_dir, *, enabled: bool = True, location=None) -> Publisher:
    cfg = mqtt_config(broker, client_id=unique_client(), homeassistant={"enabled": enabled})
    p = Publisher(cfg, device_id, store, location=location or {"name": "El Yunque"}, state_dir=state_dir,
                  sw_version="0.1.0-test")
    p.start()
    assert p.wait_connected(10)
    return p


@pytest.mark.parametrize("device_id", ["dev1", "Garden.Recorder-2", "a__b"])
def test_configs_follow_current_conventions_and_validate(device_id):
    topics = Topics("dawnchorus", device_id)
    found = configs(topics, location_name="El Yunque", sw_version="1.2.3")
    assert sorted(found) == sorted(config_topics(device_id))
    for topic, cfg in found.items():
        SCHEMA.validate(cfg)
        assert "object_id" not in cfg
        domain, obj = cfg["default_entity_id"].split(".")
        assert topic.split("/")[1] == domain and obj == entity_slug(cfg["unique_id"]) and obj == obj.lower()
        assert cfg["origin"] == {"name": "dawnchorus", "sw_version": "1.2.3",
                                 "support_url": "https://github.com/dawnchorus/dawnchorus"}
        assert cfg["device"]["identifiers"] == [topics.ha_node_id]
        assert cfg["availability"][0]["topic"] == topics.status
        assert not cfg["name"].startswith(cfg["device"]["name"])
    last = found[config_topics(device_id)[0]]
    assert last["state_topic"] == topics.last_detection == f"dawnchorus/{device_id}/last_detection"
    assert len({c["unique_id"] for c in found.values()}) == len(KEYS)


def test_schema_refuses_the_deprecated_and_the_incomplete():
    good = next(iter(configs(Topics("dawnchorus", "dev1")).values()))
    SCHEMA.validate(good)
    for broken in ({**good, "object_id": "dawnchorus_dev1_x"},
                   {k: v for k, v in good.items() if k != "origin"},
                   {**good, "default_entity_id": "sensor.Dawnchorus-Dev1"},
                   {**good, "origin": {"name": "dawnchorus"}}):
        with pytest.raises(jsonschema.ValidationError):
            SCHEMA.validate(broken)
    bad_device = copy.deepcopy(good)
    del bad_device["device"]["identifiers"]
    with pytest.raises(jsonschema.ValidationError):
        SCHEMA.validate(bad_device)


def test_announce_and_retained_last_detection(tmp_path, mqtt_broker, make_collector):
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(5))  # stored before the recorder (re)started
    newest = max(store.detections(), key=lambda r: r["start_utc"])
    col = make_collector(mqtt_broker, ["homeassistant/#", "dawnchorus/dev1/last_detection"])
    col.wait_subscribed()
    pub = publisher(mqtt_broker, store, "dev1", tmp_path / "state")
    try:
        assert col.wait_for(lambda c: all(c.on(t) for t in config_topics("dev1")), 10)
        for t in config_topics("dev1"):
            validate("ha_discovery", col.on(t)[0])
        # HA restarts: what it finds retained
        kept = retained(mqtt_broker, ["homeassistant/#", "dawnchorus/+/last_detection"])
        assert set(config_topics("dev1")) <= set(kept)
        last = validate("detection", kept["dawnchorus/dev1/last_detection"])
        assert last["id"] == newest["id"] and last["location"]["name"] == "El Yunque"
        # a live detection becomes the new last detection
        live = make_detections(1, start=100)
        store_then_publish(store, pub, live)
        assert col.wait_for(lambda c: live[0].id in c.ids("dawnchorus/dev1/last_detection"), 10)
        kept = retained(mqtt_broker, ["dawnchorus/+/last_detection"])
        assert json.loads(kept["dawnchorus/dev1/last_detection"])["id"] == live[0].id
        # an older detection sent later (backlog after an outage) does not replace it
        store_then_publish(store, pub, make_detections(1, start=50))
        assert col.wait_for(lambda c: store.outbox_depth() == 0, 10)
        kept = retained(mqtt_broker, ["dawnchorus/+/last_detection"])
        assert json.loads(kept["dawnchorus/dev1/last_detection"])["id"] == live[0].id
        # HA's birth message: everything is announced again
        n = len(col.on(config_topics("dev1")[0]))
        import paho.mqtt.publish as publish

        publish.single("homeassistant/status", b"online", hostname=mqtt_broker.host, port=mqtt_broker.port)
        assert col.wait_for(lambda c: len(c.on(config_topics("dev1")[0])) > n, 10)
    finally:
        pub.stop()
    remembered = json.loads((tmp_path / "state" / STATE_FILE).read_text())["topics"]
    assert set(remembered) == set(config_topics("dev1")) | {"dawnchorus/dev1/last_detection"}


def test_turning_discovery_off_removes_the_entities(tmp_path, mqtt_broker):
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(2))
    state = tmp_path / "state"
    announced(mqtt_broker, publisher(mqtt_broker, store, "dev1", state), "dev1")
    pub = publisher(mqtt_broker, store, "dev1", state, enabled=False)
    try:
        patterns = ["homeassistant/#", "dawnchorus/+/last_detection"]
        assert wait_retained(mqtt_broker, patterns, lambda kept: not kept)
    finally:
        pub.stop()
    assert json.loads((state / STATE_FILE).read_text())["topics"] == []


def test_a_new_device_id_removes_the_old_entities(tmp_path, mqtt_broker):
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(2))
    state = tmp_path / "state"
    announced(mqtt_broker, publisher(mqtt_broker, store, "dev1", state), "dev1")
    pub = publisher(mqtt_broker, store, "garden", state)
    try:
        want = set(config_topics("garden")) | {"dawnchorus/garden/last_detection"}
        assert wait_retained(mqtt_broker, ["homeassistant/#", "dawnchorus/+/last_detection"],
                             lambda kept: set(kept) == want)
    finally:
        pub.stop()


def test_never_touches_topics_it_did_not_announce(tmp_path, mqtt_broker, make_collector):
    """Discovery off and nothing remembered: not a single message under the discovery prefix."""
    col = make_collector(mqtt_broker, ["homeassistant/#", "dawnchorus/+/last_detection"])
    col.wait_subscribed()
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(2))
    pub = publisher(mqtt_broker, store, "dev1", tmp_path / "state", enabled=False)
    try:
        assert col.wait_for(lambda c: store.outbox_depth() == 0, 10)
    finally:
        pub.stop()
    assert col.messages == []


def wait_retained(broker, patterns, pred, timeout: float = 10.0) -> bool:
    from fixtures_mqtt import wait_until

    return wait_until(lambda: pred(retained(broker, patterns)), timeout, interval=0.2)


def announced(broker, pub: Publisher, device_id: str) -> None:
    """Wait until ``pub`` announced ``device_id``'s entities (retained), then stop it."""
    try:
        assert wait_retained(broker, ["homeassistant/#"], lambda kept: set(config_topics(device_id)) <= set(kept))
    finally:
        pub.stop()


def test_example_acl_allows_discovery(tmp_path, make_broker, make_collector, caplog):
    """With deploy/mosquitto's ACL a device announces its entities and last detection; HA's user reads them."""
    import shutil

    from fixtures_mqtt import REPO, make_password_file

    acl = tmp_path / "dawnchorus.acl"
    shutil.copy(REPO / "deploy" / "mosquitto" / "dawnchorus.acl", acl)
    pw = make_password_file(tmp_path / "passwd", {"dev1": "pw1", "home": "pwh"})
    broker = make_broker(password_file=pw, acl_file=acl)
    col = make_collector(broker, ["homeassistant/#", "dawnchorus/+/last_detection"], username="home", password="pwh")
    col.wait_subscribed()
    (tmp_path / "pw1").write_text("pw1")
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(3))
    cfg = mqtt_config(broker, client_id=unique_client(), homeassistant={"enabled": True}, username="dev1",
                      password_file=tmp_path / "pw1", protocol="5")
    pub = Publisher(cfg, "dev1", store, state_dir=tmp_path / "state")
    pub.start()
    try:
        assert col.wait_for(lambda c: all(c.on(t) for t in config_topics("dev1"))
                            and c.on("dawnchorus/dev1/last_detection"), 10)
        assert pub.wait_connected(5) and pub.mqtt_stats()["refused"] == 0
    finally:
        pub.stop()
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_value_templates_render_on_real_messages():
    """Each entity's templates, rendered with Jinja2 (as Home Assistant does) on the recorder's real messages."""
    jinja2 = pytest.importorskip("jinja2")
    from edge.outputs.mqtt import payloads

    topics = Topics("dawnchorus", "dev1")
    found = {t.split("/")[-2]: c for t, c in configs(topics).items()}
    det = payloads.detection(make_detections(1)[0], {"name": "El Yunque"})
    health = {"detections_total": 42, "outbox_depth": 3, "no_signal_streak": 0}
    online = payloads.status("dev1", "online", health)
    dead = payloads.status("dev1", "online", {**health, "no_signal_streak": 7})
    offline = payloads.status("dev1", "offline")
    env = jinja2.Environment()

    def render(key: str, msg: dict, field: str = "value_template") -> str:
        text = json.loads(json.dumps(msg))  # the JSON the broker carries
        return env.from_string(found[key][field]).render(value_json=text, this={"state": "kept"})

    assert render("last_species", det) == det["common_name"]
    attrs = json.loads(render("last_species", det, "json_attributes_template"))
    assert attrs["id"] == det["id"] and attrs["score"] == det["score"]
    assert render("last_detection", det) == det["start_utc"]
    assert (render("detections_count", online), render("outbox_depth", online)) == ("42", "3")
    assert render("detections_count", offline) == "kept"  # the last will carries no numbers
    assert (render("no_signal", online), render("no_signal", dead), render("no_signal", offline)) == ("OFF", "ON", "OFF")
    assert env.from_string(found["last_species"]["availability"][0]["value_template"]).render(value_json=offline) \
        == "offline"
