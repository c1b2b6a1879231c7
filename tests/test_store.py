"""The SQLite store: schema and migration from an empty file, idempotent inserts, outbox, effort, gaps."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from edge.outputs.store import DETECTION_COLUMNS, SCHEMA_VERSION, Store, StoreError
from edge.contract.record import Detection


def det(i: int, label: str = "Aa_one", start: str | None = None) -> Detection:
    start = start or f"2024-05-01T05:{i // 60:02d}:{i % 60:02d}.000Z"
    return Detection(id=f"id-{i}", device_id="dev1", source="/rec/a.wav", start_utc=start, end_utc=start,
                     offset_s=float(i), end_offset_s=i + 3.0, label=label, common_name=label.split("_")[1],
                     score=0.9, mean_score=0.8, n_windows=2, model_version="1.0", model_sha256="a" * 64,
                     created_utc="2024-05-01T06:00:00.000Z", time_source="file-name")


def schema(path) -> dict:
    con = sqlite3.connect(path)
    try:
        tables = {r[0]: [c[1] for c in con.execute(f"PRAGMA table_info({r[0]})")]
                  for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0]: r[1] for r in con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
        version = con.execute("PRAGMA user_version").fetchone()[0]
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    return {"tables": tables, "indexes": indexes, "version": version, "mode": mode}


@pytest.mark.parametrize("start", ["missing", "zero-bytes", "empty-sqlite"])
def test_schema_created_by_migration(tmp_path, start):
    path = tmp_path / "sub" / "d.db" if start == "missing" else tmp_path / "d.db"
    if start == "zero-bytes":
        path.write_bytes(b"")
    elif start == "empty-sqlite":
        sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()
    s = Store(path)
    assert s.schema_version == SCHEMA_VERSION
    s.close()
    sc = schema(path)
    assert sc["version"] == SCHEMA_VERSION and sc["mode"] == "wal"
    cols = sc["tables"]["detections"]
    assert set(DETECTION_COLUMNS) | {"seq", "published_utc", "acked_t"} == set(cols)
    assert {"id", "device_id", "source", "start_utc", "end_utc", "offset_s", "label", "common_name", "score",
            "model_version", "model_sha256", "created_utc"} <= set(cols)
    assert set(sc["tables"]["effort"]) >= {"start_utc", "end_utc", "device_id", "source", "model_version", "settings"}
    assert set(sc["tables"]["gaps"]) >= {"start_utc", "end_utc", "reason", "samples_lost"}
    assert {"detections_start", "detections_label_start", "detections_outbox"} <= set(sc["indexes"])
    Store(path).close()  # opening again migrates nothing and keeps the data model
    assert schema(path) == sc


def test_queries_use_the_indexes(tmp_path):
    s = Store(tmp_path / "d.db")
    plan = lambda sql: " ".join(r["detail"] for r in s.db.query("EXPLAIN QUERY PLAN " + sql))
    assert "detections_label_start" in plan("SELECT * FROM detections WHERE label = 'x' AND start_utc >= '2024'")
    assert "detections_start" in plan("SELECT * FROM detections WHERE start_utc >= '2024' ORDER BY start_utc")
    assert "detections_outbox" in plan("SELECT * FROM detections WHERE published_utc IS NULL ORDER BY seq LIMIT 5")


def test_newer_schema_and_non_database_refused(tmp_path):
    path = tmp_path / "new.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer than this dawnchorus"):
        Store(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(junk)


def test_insert_is_idempotent_and_reports_new(tmp_path):
    s = Store(tmp_path / "d.db")
    assert [d.id for d in s.insert([det(1), det(2)])] == ["id-1", "id-2"]
    assert [d.id for d in s.insert([det(2), det(3), det(1)])] == ["id-3"]
    assert s.count() == 3
    s.insert([det(3), det(4)])
    assert s.count() == 4
    row = s.detections(label="Aa_one")[0]
    assert {k: row[k] for k in DETECTION_COLUMNS} == det(1).to_dict()


def test_outbox_oldest_first_and_acknowledgement(tmp_path):
    s = Store(tmp_path / "d.db")
    s.insert([det(i, start="2024-05-01T05:00:00.000Z") for i in (5, 3, 9, 1)])  # insertion order, not id order
    assert s.outbox_depth() == 4
    assert [r["id"] for r in s.unpublished(3)] == ["id-5", "id-3", "id-9"]
    assert s.mark_published(["id-5", "id-9", "id-unknown"], when="2024-05-01T07:00:00.000Z") == 2
    assert s.mark_published(["id-5"]) == 0  # already acknowledged: unchanged
    assert [r["id"] for r in s.unpublished(10)] == ["id-3", "id-1"]
    assert s.outbox_depth() == 2
    assert {r["id"]: r["published_utc"] for r in s.detections()}["id-5"] == "2024-05-01T07:00:00.000Z"


def test_requeue_published_since_puts_recent_acknowledgements_back_in_the_outbox(tmp_path):
    s = Store(tmp_path / "d.db")
    s.insert([det(i) for i in (1, 2, 3, 4, 5)])
    s.mark_published(["id-1", "id-4"], when="2024-05-01T07:00:00.000Z")
    s.mark_published(["id-2"], when="2024-05-01T07:00:30.000Z")
    s.mark_published(["id-3"], when="2024-05-01T07:01:00.000Z")
    assert s.outbox_depth() == 1  # id-5 never acknowledged
    assert s.requeue_published_since("2024-05-01T07:00:30.000Z") == ["id-2", "id-3"]  # inclusive, by seq
    assert [r["id"] for r in s.unpublished(10)] == ["id-2", "id-3", "id-5"]  # oldest first again
    assert s.requeue_published_since("2024-05-01T07:00:30.000Z") == []
    pub = {r["id"]: r["published_utc"] for r in s.detections()}
    assert pub["id-1"] == pub["id-4"] == "2024-05-01T07:00:00.000Z"


def test_detection_queries(tmp_path):
    s = Store(tmp_path / "d.db")
    s.insert([det(1, "Aa_one"), det(2, "Bb_two"), det(3, "Aa_one"), det(70, "Bb_two")])
    assert [r["id"] for r in s.detections(label="Aa_one")] == ["id-1", "id-3"]
    assert [r["id"] for r in s.detections(since="2024-05-01T05:00:02.000Z", until="2024-05-01T05:01:00.000Z")] == ["id-2", "id-3"]
    assert [r["id"] for r in s.detections(limit=2)] == ["id-1", "id-2"]
    assert s.species_counts() == {"Aa_one": 2, "Bb_two": 2}
    with pytest.raises(ValueError):
        s.detections(order="score; DROP TABLE detections")


def test_effort_and_gaps(tmp_path):
    s = Store(tmp_path / "d.db")
    s.open_effort(id="e1", device_id="dev1", source="hw:1", start_utc="2024-05-01T05:00:00.000Z",
                  model_version="1.0", model_sha256="a" * 64, settings={"overlap_s": 1.5})
    assert s.effort()[0]["end_utc"] is None
    s.close_effort("e1", "2024-05-01T06:00:00.000Z")
    e = s.effort()[0]
    assert e["end_utc"] == "2024-05-01T06:00:00.000Z" and '"overlap_s": 1.5' in e["settings"]
    gid = s.add_gap(device_id="dev1", source="hw:1", start_utc="2024-05-01T05:10:00.000Z",
                    end_utc="2024-05-01T05:10:02.000Z", reason="overflow", samples_lost=64000)
    assert s.gaps() == [{"id": gid, "device_id": "dev1", "source": "hw:1", "start_utc": "2024-05-01T05:10:00.000Z",
                         "end_utc": "2024-05-01T05:10:02.000Z", "reason": "overflow", "samples_lost": 64000}]


def test_shared_between_threads_and_processes(tmp_path):
    path = tmp_path / "d.db"
    s = Store(path)
    other = Store(path)  # another connection, as another process would have

    def writer(k):
        for i in range(50):
            s.insert([det(k * 1000 + i)])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        other.unpublished(10)
    for t in threads:
        t.join()
    assert other.count() == 200 and other.outbox_depth() == 200
