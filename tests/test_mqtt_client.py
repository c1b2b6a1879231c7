"""Subscriptions (garbage and oversized payloads), retained status and the last will."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import paho.mqtt.publish as publish

from edge.outputs.store import Store
from fixtures_mqtt import REPO, Collector, wait_until
from mqtt_helpers import make_detections, start_publisher, validate, store_then_publish

STATUS = "dawnchorus/dev1/status"
MODEL_SET = "dawnchorus/dev1/model/set"


def _json_object(topic: str, payload: bytes) -> dict:
    obj = json.loads(payload.decode("utf-8"))
    if not isinstance(obj, dict) or "version" not in obj:
        raise ValueError("expected a JSON object with a version")
    return obj


def test_garbage_and_oversized_messages_are_dropped_and_never_crash(tmp_path, mqtt_broker, make_collector, caplog):
    store = Store(tmp_path / "d.db")
    pub = start_publisher(mqtt_broker, store)
    got: list[tuple[str, dict]] = []
    pub.subscribe(MODEL_SET, lambda t, p: got.append((t, _json_object(t, p))), max_bytes=1000)
    pub.subscribe("dawnchorus/models/#", lambda t, p: 1 / 0)  # a handler that always fails
    col = make_collector(mqtt_broker, ["dawnchorus/dev1/detections"])
    col.wait_subscribed()
    try:
        assert pub.wait_connected(10)
        time.sleep(0.3)  # subscriptions are sent on connect
        hostport = dict(hostname=mqtt_broker.host, port=mqtt_broker.port)
        garbage = [b"", b"\xff\xfe\x00garbage", b"{not json", b"[1, 2, 3]", json.dumps({"no": "version"}).encode(),
                   os.urandom(4096), b"{" * 900]
        for g in garbage:
            publish.single(MODEL_SET, g, qos=1, **hostport)
        publish.single("dawnchorus/models/stable", b"anything", qos=1, **hostport)
        publish.single(MODEL_SET, json.dumps({"version": "2", "pad": "x" * 2000}).encode(), qos=1, **hostport)
        publish.single(MODEL_SET, json.dumps({"version": "3"}).encode(), qos=1, **hostport)
        assert wait_until(lambda: got, 10)
        time.sleep(0.3)
        assert [obj["version"] for _, obj in got] == ["3"]
        drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert sum("larger than the 1000-byte limit" in m for m in drops) == 2  # 4096 random bytes, padded v2
        assert sum(m.startswith(f"MQTT: dropped a message on {MODEL_SET}") for m in drops) == len(garbage) - 1
        assert any("dawnchorus/models/stable" in m and "ZeroDivisionError" in m for m in drops)
        # the publisher is unharmed
        store_then_publish(store, pub, make_detections(3))
        assert col.wait_for(lambda c: len(c.on("dawnchorus/dev1/detections")) == 3, 10)
    finally:
        pub.stop()


PUBLISHER_PROCESS = textwrap.dedent("""
    import sys, time, threading
    sys.path.insert(0, {tests!r})
    from edge.outputs.store import Store
    from edge.config import MQTTConfig
    from edge.outputs.mqtt.publisher import Publisher
    cfg = MQTTConfig(enabled=True, host="127.0.0.1", port={port}, keepalive_s=5, client_id="dawnchorus-dev1")
    class Health:
        def snapshot(self):
            return {{"windows_processed": 1}}
    pub = Publisher(cfg, "dev1", Store({db!r}), health=Health())
    pub.start()
    pub.wait_connected(10)
    while pub.stats["published"] == 0 and pub._next_health == 0.0:  # the online status is on its way
        time.sleep(0.05)
    time.sleep(0.5)
    print("connected", flush=True)
    threading.Event().wait()
""")


def test_retained_status_and_last_will_when_the_process_dies(tmp_path, mqtt_broker):
    code = PUBLISHER_PROCESS.format(tests=str(REPO / "tests"), port=mqtt_broker.port, db=str(tmp_path / "d.db"))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        # a late subscriber gets the retained "online" with health
        late = Collector(mqtt_broker, [STATUS], persistent=False)
        assert late.wait_for(lambda c: c.on(STATUS), 10)
        topic, payload, retained = late.messages[0]
        online = validate("status", payload)
        assert retained and online["state"] == "online" and online["health"]["windows_processed"] == 1
        late.close()
        proc.send_signal(signal.SIGKILL)  # no clean disconnect: the broker sends the will
        proc.wait(10)
        later = Collector(mqtt_broker, [STATUS], persistent=False)
        assert later.wait_for(lambda c: c.on(STATUS) and json.loads(c.on(STATUS)[-1])["state"] == "offline", 15)
        assert later.messages[-1][2]  # retained
        validate("status", later.messages[-1][1])
        later.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_protocol_311_only(tmp_path, mqtt_broker, make_collector):
    store = Store(tmp_path / "d.db")
    pub = start_publisher(mqtt_broker, store, protocol="3.1.1")
    col = make_collector(mqtt_broker, ["dawnchorus/dev1/detections"])
    col.wait_subscribed()
    try:
        assert pub.wait_connected(10) and pub.client.protocol == "3.1.1"
        store_then_publish(store, pub, make_detections(5))
        assert col.wait_for(lambda c: len(c.on("dawnchorus/dev1/detections")) == 5, 10)
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
        line = [x for x in mqtt_broker.log_text().splitlines() if f"as {pub.client.client_id} (" in x][0]
        assert "(p2," in line  # mosquitto's log: p2 = MQTT 3.1.1, p5 = MQTT 5
    finally:
        pub.stop()


class _V311OnlyProxy:
    """A TCP proxy in front of mosquitto that answers an MQTT 5 CONNECT like a 3.1.1-only broker
    (CONNACK 'unacceptable protocol version') and forwards everything else."""

    def __init__(self, broker):
        import socket
        import threading

        self.broker = broker
        self.v5_refused = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.host = "127.0.0.1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            head = b""
            while len(head) < 16:
                chunk = conn.recv(64)
                if not chunk:
                    break
                head += chunk
            i = 1
            while head[i] & 0x80:
                i += 1
            level = head[i + 1 + 2 + 4]
            if level == 5:
                self.v5_refused += 1
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                continue
            up = socket.create_connection((self.broker.host, self.broker.port))
            up.sendall(head)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_protocol_auto_falls_back_to_311(tmp_path, mqtt_broker, make_collector, caplog):
    proxy = _V311OnlyProxy(mqtt_broker)
    store = Store(tmp_path / "d.db")
    col = make_collector(mqtt_broker, ["dawnchorus/dev1/detections"])
    col.wait_subscribed()
    pub = start_publisher(proxy, store, protocol="auto")
    try:
        assert pub.wait_connected(15)
        assert proxy.v5_refused >= 1 and pub.client.protocol == "3.1.1"
        assert any("does not speak MQTT 5" in r.getMessage() for r in caplog.records)
        store_then_publish(store, pub, make_detections(5))
        assert col.wait_for(lambda c: len(c.on("dawnchorus/dev1/detections")) == 5, 10)
    finally:
        pub.stop()
        proxy.close()
