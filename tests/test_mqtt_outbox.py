"""The outbox against a real mosquitto and a real SQLite store: nothing is lost."""
from __future__ import annotations

import threading
import time

from edge.service.health import Health
from edge.outputs.mqtt.publisher import Publisher
from edge.outputs.store import Store
from fixtures_mqtt import wait_until
from mqtt_helpers import make_detections, mqtt_config, start_publisher, validate, store_then_publish

DET = "dawnchorus/dev1/detections"
STATUS = "dawnchorus/dev1/status"


def test_delivery_qos1_validated_and_marked_published(tmp_path, mqtt_broker, make_collector):
    col = make_collector(mqtt_broker, ["dawnchorus/+/detections", "dawnchorus/+/status"])
    col.wait_subscribed()
    store = Store(tmp_path / "d.db")
    dets = make_detections(25)
    health = Health("dev1", tmp_path)  # the daemon's health object
    health.note_windows(7, 0.0012)
    health.note_model("test-1", "ab" * 32)
    pub = start_publisher(mqtt_broker, store, health=health)
    try:
        assert pub.wait_connected(10)
        store_then_publish(store, pub, dets)
        assert col.wait_for(lambda c: len(set(c.ids(DET))) == 25, 20)
        msgs = [validate("detection", p) for p in col.on(DET)]
        by_id = {m["id"]: m for m in msgs}
        for d in dets:
            m = by_id[d.id]
            assert (m["label"], m["start_utc"], m["model_sha256"]) == (d.label, d.start_utc, d.model_sha256)
            assert m["location"]["name"] == "El Yunque"
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
        assert all(r["published_utc"] for r in store.detections())
        status = [validate("status", p) for p in col.on(STATUS)]
        assert status[0]["state"] == "online"
        assert status[0]["health"]["windows_processed"] == 7
        assert status[0]["health"]["model_version"] == "test-1"
        assert status[0]["health"]["inference_latency_ms"] > 0 and status[0]["health"]["disk_free_mb"] > 0
        assert "outbox_depth" in status[0]["health"]
    finally:
        pub.stop()
    # a clean stop says offline, retained
    assert col.wait_for(lambda c: c.json_on(STATUS)[-1]["state"] == "offline", 10)


def test_broker_down_at_start_then_up(tmp_path, make_broker, make_collector):
    broker = make_broker(start=False)
    store = Store(tmp_path / "d.db")
    pub = start_publisher(broker, store)
    try:
        sink = lambda dets: store_then_publish(store, pub, dets)  # noqa: E731
        sink(make_detections(30))  # stored while the broker is down
        time.sleep(1.0)
        assert store.outbox_depth() == 30 and not pub.connected
        broker.start()
        col = make_collector(broker, [DET])
        col.wait_subscribed()
        assert pub.wait_connected(15)
        sink(make_detections(10, start=30))
        stored = {r["id"] for r in store.detections()}
        assert col.wait_for(lambda c: set(c.ids(DET)) >= stored, 30)
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
    finally:
        pub.stop()


def test_broker_killed_mid_stream_every_stored_id_arrives(tmp_path, mqtt_broker, make_collector):
    """SIGKILL loses what mosquitto acknowledged but had not delivered or saved: the re-send window covers it.

    The collector's persistent session is on disk before the first crash
    (``wait_saved``), so the restarted broker queues for it whatever arrives
    before it is back; every stored id must then arrive.
    """
    col = make_collector(mqtt_broker, [DET])
    col.wait_subscribed()
    mqtt_broker.wait_saved()
    store = Store(tmp_path / "d.db")
    pub = start_publisher(mqtt_broker, store, resend_window_s=30)
    sink = lambda dets: store_then_publish(store, pub, dets)  # noqa: E731
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set() and i < 400:
            sink(make_detections(4, start=i))
            i += 4
            time.sleep(0.02)

    t = threading.Thread(target=produce)
    try:
        assert pub.wait_connected(10)
        t.start()
        assert wait_until(lambda: pub.stats["acked"] > 0, 20)  # detections acknowledged before the first crash
        for kill in (True, False, True):
            time.sleep(0.7)
            connects = pub.client.connects
            mqtt_broker.restart(down_s=0.5, kill=kill)
            assert wait_until(lambda: pub.client.connects > connects and pub.connected, 20)
            assert col.wait_for(lambda c: c.client.is_connected(), 20)
        t.join()
        stored = {r["id"] for r in store.detections()}
        assert len(stored) == 400
        assert col.wait_for(lambda c: set(c.ids(DET)) >= stored, 60), \
            f"missing {len(stored - set(col.ids(DET)))} of {len(stored)}"
        assert wait_until(lambda: store.outbox_depth() == 0, 15)
        assert pub.stats["requeued"] > 0  # each restart looked like a crash (mosquitto says no goodbye)
    finally:
        stop.set()
        pub.stop()


def test_unclean_loss_resends_what_was_acknowledged_within_the_window(tmp_path, mqtt_broker, make_collector):
    col = make_collector(mqtt_broker, [DET, STATUS])
    col.wait_subscribed()
    mqtt_broker.wait_saved()
    store = Store(tmp_path / "d.db")
    old = make_detections(5, start=100)  # acknowledged long ago: outside the window
    store.insert(old)
    store.mark_published([d.id for d in old], "2001-01-01T00:00:00.000Z")
    pub = start_publisher(mqtt_broker, store, resend_window_s=30)
    recent = make_detections(6)
    ids = {d.id for d in recent}
    try:
        assert pub.wait_connected(10)
        store_then_publish(store, pub, recent)
        assert col.wait_for(lambda c: set(c.ids(DET)) == ids, 20)
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
        first = {r["id"]: r["published_utc"] for r in store.detections()}

        mqtt_broker.kill()  # a crash: the device sees the connection drop without a DISCONNECT
        # back in the outbox while the broker is down (so a daemon restart would send them too)
        assert wait_until(lambda: store.outbox_depth() == 6, 10)
        assert {r["id"] for r in store.unpublished(100)} == ids
        assert pub.stats["requeued"] == 6

        mqtt_broker.start()
        assert col.wait_for(lambda c: all(c.ids(DET).count(i) >= 2 for i in ids), 20)
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
        again = {r["id"]: r["published_utc"] for r in store.detections()}
        assert all(again[i] > first[i] for i in ids)  # acknowledged again by the restarted broker
        assert all(again[d.id] == "2001-01-01T00:00:00.000Z" for d in old)
        assert not set(col.ids(DET)) & {d.id for d in old}
        assert col.wait_for(lambda c: any(validate("status", m)["mqtt"]["requeued"] == 6 for m in c.on(STATUS)), 10)
    finally:
        pub.stop()


def test_resend_window_zero_resends_nothing(tmp_path, mqtt_broker, make_collector):
    col = make_collector(mqtt_broker, [DET, STATUS])
    col.wait_subscribed()
    mqtt_broker.wait_saved()
    store = Store(tmp_path / "d.db")
    pub = start_publisher(mqtt_broker, store, resend_window_s=0)
    dets = make_detections(6)
    try:
        assert pub.wait_connected(10)
        store_then_publish(store, pub, dets)
        assert col.wait_for(lambda c: len(c.ids(DET)) == 6, 20)
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
        mqtt_broker.restart(down_s=0.3, kill=True)
        # the health message on reconnect comes after any re-queueing (same thread, in that order)
        assert col.wait_for(lambda c: any(m.get("mqtt", {}).get("connects") == 2 for m in c.json_on(STATUS)), 20)
        assert store.outbox_depth() == 0 and pub.stats["requeued"] == 0
    finally:
        pub.stop()


def test_restart_resends_unacknowledged_rows(tmp_path, make_broker, make_collector):
    broker = make_broker(start=False)
    path = tmp_path / "d.db"
    store = Store(path)
    pub = start_publisher(broker, store)
    store_then_publish(store, pub, make_detections(40))
    pub.stop()  # the daemon stops with everything unacknowledged
    store.close()

    broker.start()
    col = make_collector(broker, [DET])
    col.wait_subscribed()
    store = Store(path)  # the daemon starts again
    assert store.outbox_depth() == 40
    pub = start_publisher(broker, store)
    try:
        ids = [r["id"] for r in store.unpublished(100)]
        assert col.wait_for(lambda c: set(c.ids(DET)) >= set(ids), 20)
        received = col.ids(DET)
        assert [i for i in received if i in ids] == ids  # oldest first
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
    finally:
        pub.stop()


def test_backlog_is_rate_bounded_and_live_traffic_goes_first(tmp_path, make_broker, make_collector):
    broker = make_broker(start=False)
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(200))  # a backlog from an outage
    broker.start()
    col = make_collector(broker, [DET])
    col.wait_subscribed()
    pub = start_publisher(broker, store, max_backlog_rate=40)
    try:
        assert pub.wait_connected(10)
        assert col.wait_for(lambda c: len(c.ids(DET)) >= 5, 10)
        live = make_detections(1, start=1000)
        store_then_publish(store, pub, live)
        backlog = {r["id"] for r in store.detections() if r["id"] != live[0].id}
        assert col.wait_for(lambda c: set(c.ids(DET)) >= backlog | {live[0].id}, 30)
        order = col.ids(DET)
        # the live detection was not queued behind the backlog
        assert order.index(live[0].id) < len(order) - 20
        assert wait_until(lambda: pub.drains, 10)
        assert pub.drains[0]["backlog"] == 200 and pub.drains[0]["drained_s"] > 0
    finally:
        pub.stop()


def test_home_assistant_discovery(tmp_path, mqtt_broker, make_collector):
    col = make_collector(mqtt_broker, ["homeassistant/#", STATUS])
    col.wait_subscribed()
    store = Store(tmp_path / "d.db")
    store.insert(make_detections(3))
    pub = start_publisher(mqtt_broker, store, homeassistant={"enabled": True})
    try:
        topics = ["homeassistant/sensor/dawnchorus_dev1/last_species/config",
                  "homeassistant/sensor/dawnchorus_dev1/detections_count/config"]
        assert col.wait_for(lambda c: all(c.on(t) for t in topics), 10)
        configs = [validate("ha_discovery", col.on(t)[0]) for t in topics]
        assert configs[0]["state_topic"] == "dawnchorus/dev1/last_detection"  # retained (tests/test_integrations_discovery.py)
        assert configs[1]["state_topic"] == STATUS
        assert col.wait_for(lambda c: any(m.get("health", {}).get("detections_total") == 3
                                          for m in c.json_on(STATUS)), 10)
    finally:
        pub.stop()


def test_detections_after_the_stop_event_still_go_out_on_stop(tmp_path, mqtt_broker, make_collector):
    """The daemon sets the one stop event, flushes the pipeline's last events, then stops the services."""
    col = make_collector(mqtt_broker, [DET])
    col.wait_subscribed()
    store = Store(tmp_path / "d.db")
    stop = threading.Event()
    pub = Publisher(mqtt_config(mqtt_broker), "dev1", store, stop=stop)
    pub.start()
    assert pub.wait_connected(10)
    stop.set()
    time.sleep(0.3)
    last = make_detections(3)
    store_then_publish(store, pub, last)
    pub.stop()
    assert store.outbox_depth() == 0
    assert col.wait_for(lambda c: set(c.ids(DET)) == {d.id for d in last}, 10)
