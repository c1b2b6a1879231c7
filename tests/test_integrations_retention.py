"""Retention: keep_days and the size cap prune old detections and clips, never unpublished or reviewed ones."""
from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta, timezone

import numpy as np

from edge.outputs.clips import ClipWriter
from edge.outputs.mqtt.publisher import Publisher
from edge.outputs.retention import Retention
from edge.outputs.store import Store
from edge.types import AudioBlock
from fixtures_mqtt import wait_until
from mqtt_helpers import make_detections, mqtt_config, unique_client

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def aged(n: int, days_ago: float, start: int = 0):
    """``n`` detections stored ``days_ago`` days before NOW."""
    created = (NOW - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")
    return [dataclasses.replace(d, created_utc=created) for d in make_detections(n, start=start)]


def retention(store, **kw) -> Retention:
    return Retention(store, clock=lambda: NOW, **kw)


def ids(store) -> set[str]:
    return {r["id"] for r in store.detections()}


def review(store, det_id: str, verdict: str = "correct", **dirs) -> None:
    """A review as the dashboard records it (edge.outputs.reviews, its own connection and table)."""
    from edge.outputs.reviews import Reviews, connect

    conn = connect(store.path)
    try:
        Reviews(conn, **dirs).add(det_id, verdict)
    finally:
        conn.close()


def test_keep_days_prunes_by_the_time_stored(tmp_path):
    store = Store(tmp_path / "d.db")
    old, recent = aged(30, 40), aged(20, 5, start=100)
    store.insert(old + recent)
    rep = retention(store, keep_days=30).prune()
    assert rep.by_age == 30 and rep.deleted == 30
    assert ids(store) == {d.id for d in recent}
    assert retention(store, keep_days=30).prune().deleted == 0  # idempotent


def test_unpublished_detections_are_kept_while_mqtt_is_on(tmp_path):
    store = Store(tmp_path / "d.db")
    old = aged(10, 40)
    store.insert(old)
    published = [d.id for d in old[:6]]
    store.mark_published(published)
    rep = retention(store, keep_days=30, mqtt_enabled=True).prune()
    assert rep.deleted == 6 and set(rep.ids) == set(published)
    assert ids(store) == {d.id for d in old[6:]} and store.outbox_depth() == 4
    # with MQTT off there is no outbox to protect
    assert retention(store, keep_days=30, mqtt_enabled=False).prune().deleted == 4


def test_reviewed_detections_are_never_pruned(tmp_path):
    store = Store(tmp_path / "d.db")
    old = aged(10, 40)
    store.insert(old)
    review(store, old[2].id)
    review(store, old[7].id, "wrong")
    assert retention(store, keep_days=30).prune().deleted == 8
    assert ids(store) == {old[2].id, old[7].id}
    assert retention(store, max_mb=0.000001).prune().deleted == 0  # the size cap does not touch them either


def test_an_unknown_reviews_table_stops_pruning(tmp_path, caplog):
    store = Store(tmp_path / "d.db")
    store.insert(aged(5, 40))
    # a reviews table of another shape (a future schema this code does not know)
    store.db.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, detection TEXT NOT NULL, verdict TEXT NOT NULL)")
    rep = retention(store, keep_days=30).prune()
    assert rep.deleted == 0 and "detection_id" in rep.skipped
    assert store.count() == 5 and "nothing pruned" in caplog.text


def test_size_cap_removes_the_oldest_until_the_store_fits(tmp_path):
    store = Store(tmp_path / "d.db")
    batch = aged(6000, 1)
    store.insert(batch)
    store.mark_published([d.id for d in batch[:5000]])  # the newest 1000 still wait for the broker
    r = retention(store, mqtt_enabled=True)
    full = r._used_bytes(store.db)
    cap_mb = full / 2 / 1e6
    r = retention(store, max_mb=cap_mb, mqtt_enabled=True)
    rep = r.prune()
    assert rep.by_size > 0 and not rep.over_cap
    assert r._used_bytes(store.db) <= cap_mb * 1e6
    left = [row["id"] for row in store.detections(order="seq")]
    kept_order = [d.id for d in batch if d.id in set(left)]
    assert kept_order == [d.id for d in batch[-len(left):]]  # oldest went first: what is left is the newest
    assert store.outbox_depth() == 1000  # every unpublished one kept
    # a cap nothing more can meet: pruned down to the protected rows, and said so
    rep = retention(store, max_mb=0.001, mqtt_enabled=True).prune()
    assert rep.over_cap and store.count() == 1000 and store.outbox_depth() == 1000


def test_clips_of_pruned_detections_go_with_them(tmp_path):
    store = Store(tmp_path / "d.db")
    old, recent = aged(3, 40), aged(2, 1, start=10)
    store.insert(old + recent)
    clips = ClipWriter(tmp_path / "clips", 8000, padding_s=0.0)
    clips.add_audio(AudioBlock(np.zeros(8000 * 60, np.float32), NOW, 0.0))
    clips.handle(old + recent)
    clips.flush()
    assert clips.written == 5
    review(store, old[0].id, kept_dir=tmp_path / "reviewed", clips_dir=tmp_path / "clips")
    assert (tmp_path / "reviewed" / f"{old[0].id}.wav").exists()
    rep = retention(store, keep_days=30, clips_dir=tmp_path / "clips").prune()
    assert rep.deleted == 2 and rep.clips_deleted == 2 and rep.clip_bytes > 0
    left = sorted(p.name for p in (tmp_path / "clips").rglob("*.wav"))
    assert len(left) == 3 and (tmp_path / "reviewed" / f"{old[0].id}.wav").exists()
    assert all(any(p.endswith(f"_{d.id[:8]}.wav") for p in left) for d in [old[0], *recent])


def test_service_prunes_at_start_and_stops(tmp_path):
    path = tmp_path / "d.db"
    store = Store(path)
    store.insert(aged(4, 40) + aged(1, 0, start=9))
    stop = threading.Event()
    svc = Retention(lambda: Store(path), keep_days=30, clock=lambda: NOW, interval_s=3600, stop=stop)
    svc.start()
    assert wait_until(lambda: svc.reports, 10)
    assert svc.reports[0].deleted == 4 and store.count() == 1
    stop.set()
    svc.stop()
    assert svc._thread is None


def test_never_prunes_what_the_broker_has_not_acknowledged(tmp_path, make_broker):
    """Broker down: old detections wait in the outbox and survive pruning; once delivered they can go."""
    broker = make_broker(start=False)
    store = Store(tmp_path / "d.db")
    old = aged(20, 40)
    store.insert(old)
    r = retention(store, keep_days=30, mqtt_enabled=True)
    assert r.prune().deleted == 0 and store.count() == 20
    broker.start()
    pub = Publisher(mqtt_config(broker, client_id=unique_client()), "dev1", store)
    pub.start()
    try:
        assert wait_until(lambda: store.outbox_depth() == 0, 20)
    finally:
        pub.stop()
    assert r.prune().deleted == 20 and store.count() == 0
