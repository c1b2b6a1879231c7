"""Oversized messages on a model topic must not stop later model updates (a denial of updates without any key).

mosquitto 2.0.11 (Debian 12, Raspberry Pi OS) drops a QoS 1 message larger
than the device's MQTT 5 maximum packet size but keeps it "in flight" to that
device for good; with its default of 20 messages in flight, 20 such messages
stopped every later QoS 1 message to the device -- signed updates included --
until the device reconnected. The device now subscribes at QoS 0: the broker
keeps no in-flight state for what it sends, so there is nothing to get stuck,
and a device that was offline still gets the update (it is retained; the
session never outlived a connection anyway). Real parts: a real mosquitto, the
MQTT client and the update service with its model store, pipeline and LiteRT.
"""
from __future__ import annotations

import paho.mqtt.publish as mqtt_publish
import pytest

from fixtures_mqtt import wait_until
from fixtures_updates import make_bundle
from test_updates_mqtt import Device  # the parts the daemon wires for updates (model store, pipeline, MQTT)

FLOOD = 24  # more than mosquitto's default max_inflight_messages (20)


def _accepted(dev: Device, version: str, timeout: float = 30) -> bool:
    return wait_until(lambda: any(r.result == "accepted" and r.version == version for r in dev.updates.results),
                      timeout, interval=0.2)


def _push(broker, topic: str, payload: bytes) -> None:  # as `python -m trainer push` does: retained, QoS 1
    mqtt_publish.single(topic, payload, qos=1, retain=True, hostname=broker.host, port=broker.port)


def _flood(broker, topic: str, size: int) -> None:
    """FLOOD QoS 1 messages too large for the device (not retained: the broker's copy goes after delivery)."""
    mqtt_publish.multiple([{"topic": topic, "payload": b"\xff" * size, "qos": 1}] * FLOOD,
                          hostname=broker.host, port=broker.port)


@pytest.mark.parametrize("when", ["connected", "after a broker restart"])
def test_oversized_messages_on_a_model_topic_do_not_stop_later_updates(tmp_path, mqtt_broker, team_keys, when):
    v2, v3 = make_bundle(team_keys.private, "2.0"), make_bundle(team_keys.private, "3.0")
    max_mb = round(len(v3) / 2**20 + 0.05, 2)  # the limit just fits a bundle: the flood stays small
    dev = Device(tmp_path, mqtt_broker, team_keys, max_bundle_mb=max_mb).start()
    try:
        packet = dev.mqtt.client.max_packet_bytes
        assert packet and len(v3) < packet
        _push(mqtt_broker, dev.topics.model_set, v2)
        assert _accepted(dev, "2.0"), dev.updates.results  # the subscriptions are in place
        if when == "after a broker restart":  # the subscriptions made again on reconnect are QoS 0 too
            connects = dev.mqtt.client.connects
            mqtt_broker.restart(down_s=0.5)
            assert wait_until(lambda: dev.mqtt.client.connects > connects and dev.mqtt.connected, 30)
        # anyone who may publish on the channel topic, no key needed: each is dropped by the broker for this device
        _flood(mqtt_broker, dev.topics.model_channel("stable"), packet + 64 * 1024)
        _push(mqtt_broker, dev.topics.model_set, v3)
        assert _accepted(dev, "3.0"), f"the update never arrived after {FLOOD} oversized messages: " \
                                      f"{[(r.result, r.version) for r in dev.updates.results]}"
        assert dev.models.active["version"] == "3.0"
    finally:
        dev.stop()


def test_a_device_that_was_offline_gets_the_retained_update_when_it_connects(tmp_path, mqtt_broker, team_keys):
    """The guarantee QoS 0 must keep: the update pushed while the device was away is delivered on connect."""
    dev = Device(tmp_path, mqtt_broker, team_keys)
    _push(mqtt_broker, dev.topics.model_channel("stable"), make_bundle(team_keys.private, "2.0"))
    dev.start()
    try:
        assert _accepted(dev, "2.0"), dev.updates.results
    finally:
        dev.stop()
