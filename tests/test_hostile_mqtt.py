"""Hostile MQTT messages on the model topics, through a real mosquitto, to a running device.

Anyone who can publish on ``<prefix>/<device>/model/set`` reaches the update
service before any signature is checked. Each hostile message must be
answered with a retained update report that refuses it for a one-line
reason (never silence, never a traceback), while the old model keeps
detecting and storing; messages over the size bound are dropped with a log
line; a good bundle after all of them is still accepted.
"""
from __future__ import annotations

import logging

import paho.mqtt.publish as mqtt_publish
import pytest

from fixtures_mqtt import Broker, Collector
from hostile_inputs import message_cases
from test_hostile_bundles import _cases_and_keys
from test_updates_mqtt import Device  # the parts the daemon wires for updates (model store, pipeline, MQTT)


def _names():
    good, keys, _ = _cases_and_keys()
    return [c.name for c in message_cases(good, keys.private)]


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    good, keys, _ = _cases_and_keys()
    cases = {c.name: c for c in message_cases(good, keys.private)}
    root = tmp_path_factory.mktemp("hostile_mqtt")
    broker = Broker(root / "broker").start()
    (root / "device").mkdir()
    dev = Device(root / "device", broker, keys, start_version="1.0", max_bundle_mb=8).start()  # the default
    reports = Collector(broker, [dev.topics.model])
    reports.wait_subscribed()
    assert reports.wait_for(lambda c: len(c.on(dev.topics.model)) > 0, 10)
    yield {"broker": broker, "dev": dev, "reports": reports, "cases": cases, "good": good, "keys": keys}
    reports.close()
    if not dev.stop_event.is_set():
        dev.stop()
    broker.kill()


def _send(o, payload: bytes) -> dict:
    topic = o["dev"].topics.model
    seen = len(o["reports"].on(topic))
    mqtt_publish.single(o["dev"].topics.model_set, payload, qos=1, hostname=o["broker"].host, port=o["broker"].port)
    assert o["reports"].wait_for(lambda c: len(c.on(topic)) > seen and
                                 (c.json_on(topic)[-1]["last_update"] or {}).get("received_utc"), 30)
    return o["reports"].json_on(topic)[-1]["last_update"]


def pytest_generate_tests(metafunc):
    if "message" in metafunc.fixturenames:
        names = _names()
        metafunc.parametrize("message", names, ids=names)


def test_hostile_message_gets_a_refusal_report(message, online):
    case = online["cases"][message]
    fed = online["dev"].feeder.blocks_fed
    upd = _send(online, case.build())
    assert upd["result"] == "refused", upd
    reason = upd["reason"]
    assert "\n" not in reason and len(reason) <= 300 and case.phrase in reason, reason
    assert "Traceback" not in reason
    assert online["dev"].pipeline.bundle.version == "1.0"
    online["dev"].feeder.wait_blocks(1)  # still detecting
    assert online["dev"].feeder.blocks_fed > fed


def test_oversized_messages_never_reach_the_handler(online, caplog):
    """Over the model topics' bound the client drops a message with a log line; over the maximum packet size
    the device announced (MQTT 5) the broker does not even send it. No report, no crash, either way."""
    from edge.contract.bundle import message_limit
    from edge.outputs.mqtt.publisher import max_packet_bytes
    from fixtures_mqtt import wait_until

    dev = online["dev"]
    topic = dev.topics.model
    assert dev.mqtt.client.protocol == "5"
    limit = message_limit(dev.updates.max_bytes)
    seen = len(online["reports"].on(topic))
    with caplog.at_level(logging.WARNING, logger="edge.outputs.mqtt.client"):
        mqtt_publish.single(dev.topics.model_set, b"x" * (limit + 1), qos=1, hostname=online["broker"].host,
                            port=online["broker"].port)
        assert wait_until(lambda: f"larger than the {limit}-byte limit" in caplog.text, 20)
        caplog.clear()
        mqtt_publish.single(dev.topics.model_set, b"y" * (max_packet_bytes(dev.cfg) + 1), qos=1,
                            hostname=online["broker"].host, port=online["broker"].port)
        _send(online, b"after the big ones")  # the next message is answered: the big one was not delivered
        assert "larger than" not in caplog.text
    assert len(online["reports"].on(topic)) == seen + 1


def test_after_every_hostile_message_a_good_bundle_is_accepted_and_nothing_was_lost(online):
    from fixtures_updates import make_bundle

    dev = online["dev"]
    upd = _send(online, make_bundle(online["keys"].private, "3.0"))
    assert upd["result"] == "accepted", upd
    dev.feeder.wait_blocks(4)
    dets = dev.stop()
    stored = {r["id"] for r in dev.store.detections()}
    assert dets and {d.id for d in dets} <= stored
