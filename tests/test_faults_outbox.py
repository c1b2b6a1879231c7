"""The MQTT re-send window under faults: it survives a device restart, and re-sends are not amplified.

Real mosquitto (SIGKILL), real SQLite store, real paho publisher; a persistent
subscriber session (offline or online) counts what arrives.
"""
from __future__ import annotations

from collections import Counter

from edge.outputs.store import Store
from fixtures_mqtt import wait_until
from mqtt_helpers import make_detections, start_publisher, store_then_publish

DET = "dawnchorus/dev1/detections"


def test_acknowledged_before_a_device_restart_are_resent_when_the_broker_then_crashes(
        tmp_path, make_broker, make_collector):
    """Device acks N, restarts, then the broker crashes before saving: the offline subscriber still gets all N."""
    broker = make_broker(extra="autosave_interval 3600")  # saves only on a clean stop: a SIGKILL loses what it holds
    col = make_collector(broker, [DET], client_id="collector-restart")
    col.wait_subscribed()
    broker.restart()  # clean: the collector's persistent session is now on disk, nothing else will be
    assert col.wait_for(lambda c: c.client.is_connected(), 20)
    col.close()  # the subscriber goes offline: the broker queues for it, in memory only

    path = tmp_path / "d.db"
    store = Store(path)
    dets = make_detections(12)
    pub = start_publisher(broker, store, resend_window_s=60)
    try:
        assert pub.wait_connected(10)
        store_then_publish(store, pub, dets)
        assert wait_until(lambda: store.outbox_depth() == 0, 20)  # all acknowledged
    finally:
        pub.stop()  # the device restarts (a clean stop: this side said goodbye)
    store.close()

    store = Store(path)
    pub = start_publisher(broker, store, resend_window_s=60)  # a new process: nothing in memory
    try:
        assert pub.wait_connected(10)
        broker.kill()  # crash: the queued messages for the offline subscriber are gone
        assert wait_until(lambda: store.outbox_depth() == 12, 10), "acknowledged rows not put back in the outbox"
        broker.start()
        assert wait_until(lambda: store.outbox_depth() == 0, 20)
        col2 = make_collector(broker, [DET], client_id="collector-restart")  # the subscriber comes back
        ids = {d.id for d in dets}
        assert col2.wait_for(lambda c: set(c.ids(DET)) >= ids, 20), \
            f"lost {len(ids - set(col2.ids(DET)))} of {len(ids)}"
    finally:
        pub.stop()


def test_resends_do_not_refresh_the_window_so_crashes_close_together_do_not_amplify(
        tmp_path, mqtt_broker, make_collector):
    """Crashes less than a window after the last acknowledgement: each detection is re-sent only by the crashes
    whose last acknowledgement lies within the window of its FIRST one (before: each re-send refreshed the
    acknowledgement time, so every crash re-sent everything again: 6 deliveries each here)."""
    window = 3.0
    col = make_collector(mqtt_broker, [DET])
    col.wait_subscribed()
    mqtt_broker.wait_saved()
    store = Store(tmp_path / "d.db")
    dets = make_detections(20)
    ids = [d.id for d in dets]
    pub = start_publisher(mqtt_broker, store, resend_window_s=window)
    try:
        assert pub.wait_connected(10)
        store_then_publish(store, pub, dets)
        assert col.wait_for(lambda c: set(c.ids(DET)) >= set(ids), 20)
        assert wait_until(lambda: store.outbox_depth() == 0, 10)
        for _ in range(5):
            connects = pub.client.connects
            requeued = pub.stats["requeued"]
            mqtt_broker.kill()
            # the loss is seen and handled (re-queued or not) before the broker is back
            wait_until(lambda: pub.stats["requeued"] > requeued, 2)
            mqtt_broker.start()
            assert wait_until(lambda: pub.client.connects > connects and pub.connected, 20)
            assert wait_until(lambda: store.outbox_depth() == 0, 20)
            assert col.wait_for(lambda c: c.client.is_connected(), 20)
            pub.stop_event.wait(0.8 * window)  # the next crash: less than a window after the last acknowledgement
        got = Counter(i for i in col.ids(DET) if i in set(ids))
        assert set(got) == set(ids)
        # crash 1 and crash 2 (its last acknowledgement came just after crash 1) re-send; the later ones do not
        assert max(got.values()) <= 3, got
        assert pub.stats["requeued"] <= 2 * len(ids)
    finally:
        pub.stop()


def test_resends_queue_behind_the_real_backlog(tmp_path):
    store = Store(tmp_path / "d.db")
    old, new = make_detections(5), make_detections(5, start=5)
    store.insert(old)
    store.mark_published([d.id for d in old], "2024-05-01T07:00:00.000Z", acked_t=100.0)
    store.insert(new)  # never sent (an outage)
    assert store.requeue_acked_since(99.0) == [d.id for d in old]
    assert [r["id"] for r in store.unpublished(7)] == [d.id for d in new] + [d.id for d in old[:2]]
    # acknowledged again: the first acknowledgement's time stays
    store.mark_published([d.id for d in old], "2024-05-01T08:00:00.000Z", acked_t=500.0)
    assert store.last_acked_t() == 100.0
    assert store.requeue_acked_since(200.0) == []
    assert store.requeue_acked_since(100.0) == [d.id for d in old]


def test_store_refusing_acknowledgements_logs_once_and_sends_nothing_twice(tmp_path, mqtt_broker, make_collector,
                                                                            caplog):
    """The store is locked by another process while the broker acknowledges: one error line (no traceback
    every second), the acknowledgements are kept and recorded once the lock goes, and nothing is sent again."""
    import logging
    import time

    from fixtures_faults import Locker

    col = make_collector(mqtt_broker, [DET])
    col.wait_subscribed()
    path = tmp_path / "d.db"
    store = Store(path)
    dets = make_detections(8)
    store.insert(dets)
    ids = {d.id for d in dets}
    lock = Locker(path)
    pub = start_publisher(mqtt_broker, lambda: Store(path, timeout_s=0.2))
    try:
        assert col.wait_for(lambda c: set(c.ids(DET)) == ids, 20)
        time.sleep(3)  # the outbox loop meets the locked store again and again
        assert store.outbox_depth() == 8
        lock.release()
        assert wait_until(lambda: store.outbox_depth() == 0, 40)
        assert Counter(col.ids(DET)) == Counter({i: 1 for i in ids})
        errors = [r for r in caplog.records if r.name.startswith("edge.outputs.mqtt") and r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None and "refuses" in errors[0].getMessage()
    finally:
        lock.release()
        pub.stop()
