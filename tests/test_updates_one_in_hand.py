"""Bounded memory for model messages: one largest bundle in hand at a time, and nothing kept after it.

A bundle that arrives while another one waits or is checked, beyond one
largest message's bytes, is refused at once with a one-line reason that is
logged and reported (it used to be dropped with a log line only); the one in
hand is still checked and swapped in, and the refused one is accepted when
sent again. The MQTT client lets go of a message once its handler returned
(it used to keep the last one until the next came: megabytes for a bundle).
Real parts: the update service with its model store, pipeline and LiteRT
loader (held at a gate to keep a bundle "being checked"), a real mosquitto.
Peak memory figures are measured in bench/_hostile.py.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

import paho.mqtt.publish as publish

from edge.config import MQTTConfig, parse_config
from edge.contract.bundle import message_limit
from edge.contract.interpreter import load_model
from edge.detection.pipeline import Pipeline
from edge.outputs.mqtt.client import MQTTClient
from edge.service.modelstore import ModelStore
from edge.service.updates import UpdateService, models_dir_for, resolve_startup
from fixtures_mqtt import wait_until
from fixtures_updates import make_bundle


def _service(tmp_path, keys, max_bundle_mb: float, loader):
    start = tmp_path / "start.bundle"
    start.write_bytes(make_bundle(keys.private, "1.0"))
    cfg = parse_config({
        "device_id": "rec1", "state_dir": str(tmp_path / "state"),
        "model": {"bundle": str(start), "public_key": str(keys.public_path), "max_bundle_mb": max_bundle_mb},
        "store": {"path": str(tmp_path / "state" / "detections.db")},
    })
    models = ModelStore(models_dir_for(cfg))
    running = resolve_startup(cfg, models)
    pipeline = Pipeline(running.bundle, running.model, device_id=cfg.device_id)
    return UpdateService(cfg, models, running, pipeline, loader=loader), models


def test_a_bundle_beyond_the_one_in_hand_is_refused_with_a_report_and_the_first_still_swaps(
        tmp_path, team_keys, caplog):
    v2, v3 = make_bundle(team_keys.private, "2.0"), make_bundle(team_keys.private, "3.0")
    # the limit fits one of these bundles, not two
    max_mb = round(len(v2) / 2**20 + 0.1, 2)
    assert len(v2) <= message_limit(int(max_mb * 2**20)) < len(v2) + len(v3)
    checking, gate = threading.Event(), threading.Event()

    def loader(bundle, threads):  # LiteRT's loader, held while the test sends the second bundle
        checking.set()
        assert gate.wait(30)
        return load_model(bundle, threads)

    svc, models = _service(tmp_path, team_keys, max_mb, loader)
    svc.start()
    try:
        assert svc.offer(v2, "dawnchorus/rec1/model/set") is True
        assert checking.wait(30), "the first bundle never reached the loader"
        with caplog.at_level(logging.WARNING, logger="edge.service.updates"):
            assert svc.offer(v3, "dawnchorus/models/stable") is False
        gate.set()
        assert wait_until(lambda: len(svc.results) == 2, 30), svc.results
        first, second = svc.results
        assert (first.result, first.version) == ("accepted", "2.0")
        assert second.result == "refused" and second.origin == "dawnchorus/models/stable"
        assert "not checked" in second.reason and "\n" not in second.reason
        assert f"{len(v3)} bytes arrived while {len(v2)} bytes" in second.reason
        assert any("not checked" in r.getMessage() for r in caplog.records)
        # the report (retained over MQTT; the state file here) says so, after the first one's
        assert models.state["last_update"]["result"] == "refused"
        assert models.active["version"] == "2.0"
        # nothing is stuck: sent again, the refused one is checked and swapped in
        assert svc.offer(v3, "dawnchorus/models/stable") is True
        assert wait_until(lambda: len(svc.results) == 3, 30)
        assert (svc.results[2].result, svc.results[2].version) == ("accepted", "3.0")
    finally:
        gate.set()
        svc.stop()


def test_small_bundles_still_wait_their_turn(tmp_path, team_keys):
    """Two bundles that together fit one largest message are both checked, in order."""
    v2, v3 = make_bundle(team_keys.private, "2.0"), make_bundle(team_keys.private, "3.0")
    checking, gate = threading.Event(), threading.Event()

    def loader(bundle, threads):
        checking.set()
        assert gate.wait(30)
        return load_model(bundle, threads)

    svc, models = _service(tmp_path, team_keys, 32, loader)
    svc.start()
    try:
        svc.offer(v2, "dawnchorus/rec1/model/set")
        assert checking.wait(30)
        svc.offer(v3, "dawnchorus/rec1/model/set")
        gate.set()
        assert wait_until(lambda: len(svc.results) == 2, 60)
        assert [(r.result, r.version) for r in svc.results] == [("accepted", "2.0"), ("accepted", "3.0")]
    finally:
        gate.set()
        svc.stop()


def test_the_client_keeps_no_reference_to_a_handled_message(mqtt_broker):
    stop = threading.Event()
    client = MQTTClient(MQTTConfig(enabled=True, host=mqtt_broker.host, port=mqtt_broker.port), "dev-refs", stop)
    got: list[bytes] = []
    client.subscribe("dawnchorus/rec1/model/set", lambda topic, payload: got.append(payload), max_bytes=4 << 20)
    client.start()
    try:
        assert client.wait_connected(10)
        assert wait_until(lambda: client.connects and client.connected, 5)
        for _ in range(10):  # the subscription may still be on its way: send until it arrives
            publish.single("dawnchorus/rec1/model/set", b"\x01" * (2 << 20), qos=1, hostname=mqtt_broker.host,
                           port=mqtt_broker.port)
            if wait_until(lambda: got, 2):
                break
        assert got
        # only our list (and getrefcount's argument) hold it once the dispatcher is idle again
        assert wait_until(lambda: sys.getrefcount(got[0]) == 2, 5), sys.getrefcount(got[0])
    finally:
        stop.set()
        client.stop()



def test_messages_waiting_for_their_handler_hold_at_most_one_largest_message(mqtt_broker, caplog):
    """A burst read faster than handled is dropped with a log line instead of piling up in memory."""
    stop, gate = threading.Event(), threading.Event()
    client = MQTTClient(MQTTConfig(enabled=True, host=mqtt_broker.host, port=mqtt_broker.port), "dev-wait", stop)
    got: list[int] = []

    def slow(topic, payload):  # the first message is held in its handler until the others have arrived
        assert gate.wait(30)
        got.append(len(payload))

    client.subscribe("dawnchorus/rec1/model/set", slow, max_bytes=3 << 20)
    client.subscribe("dawnchorus/rec1/ping", lambda t, p: got.append(len(p)))
    client.start()
    try:
        assert client.wait_connected(10)
        hostport = dict(hostname=mqtt_broker.host, port=mqtt_broker.port)
        assert wait_until(lambda: _sent_and_seen(client, hostport, got), 20)  # subscriptions in place
        got.clear()
        with caplog.at_level(logging.WARNING, logger="edge.outputs.mqtt.client"):
            publish.multiple([("dawnchorus/rec1/model/set", bytes([i]) * (2 << 20), 1, False) for i in (1, 2, 3)],
                             **hostport)
            assert wait_until(lambda: sum("already wait for their handler" in r.getMessage()
                                          for r in caplog.records) == 1, 20)
        publish.single("dawnchorus/rec1/ping", b"small", qos=1, **hostport)  # small ones are never held back
        gate.set()  # the one in the handler and the one that waited are handled; the third was dropped
        assert wait_until(lambda: sorted(got) == [5, 2 << 20, 2 << 20], 10), got
        time.sleep(0.3)
        assert sorted(got) == [5, 2 << 20, 2 << 20]
    finally:
        gate.set()
        stop.set()
        client.stop()


def _sent_and_seen(client, hostport, got) -> bool:
    publish.single("dawnchorus/rec1/ping", b"x", qos=1, **hostport)
    return wait_until(lambda: bool(got), 1)


def test_the_broker_connection_reads_a_bundle_in_small_pieces(mqtt_broker):
    """The connection's kernel receive buffer is bounded, so a burst waits on TCP, not in this process."""
    import socket

    from edge.outputs.mqtt.client import RECEIVE_BUFFER_BYTES

    stop = threading.Event()
    client = MQTTClient(MQTTConfig(enabled=True, host=mqtt_broker.host, port=mqtt_broker.port), "dev-rcv", stop)
    client.start()
    try:
        assert client.wait_connected(10)
        sock = client._client.socket()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) <= 2 * RECEIVE_BUFFER_BYTES  # Linux doubles it
    finally:
        stop.set()
        client.stop()
