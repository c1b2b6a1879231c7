"""One detection record: the store's columns, the MQTT payload, the CSV/JSON/Raven columns and the JSON Schema
follow from ``edge.contract.record.Detection`` (checked here, in one place)."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import FrozenInstanceError
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest

from edge.contract.record import (DETECTION_FIELDS, FIELD_TYPES, OUTPUT_KINDS, Detection, format_utc, parse_utc,
                                  utc_now)
from edge.outputs.mqtt import payloads
from edge.outputs.store import STORE_COLUMNS, Store
from edge.outputs.writers import RAVEN_FIELDS, CSVWriter, JSONWriter, RavenWriter

SQL_TYPES = {str: "TEXT", float: "REAL", int: "INTEGER"}
JSON_TYPES = {str: "string", float: "number", int: "integer"}


def det(i: int = 1) -> Detection:
    return Detection(id=f"id-{i}", device_id="dev1", source="/rec/20240501_053000.wav",
                     start_utc="2024-05-01T05:30:03.000Z", end_utc="2024-05-01T05:30:06.000Z", offset_s=3.0 * i,
                     end_offset_s=3.0 * i + 3, label="Turdus_merula", common_name="Eurasian Blackbird", score=0.9123,
                     mean_score=0.8, n_windows=2, model_version="1.0", model_sha256="ab" * 32,
                     created_utc="2024-05-01T06:00:00.000Z", time_source="file-name")


def test_the_record_is_frozen_and_typed():
    d = det()
    with pytest.raises(FrozenInstanceError):
        d.score = 1.0  # type: ignore[misc]
    assert set(FIELD_TYPES.values()) <= set(SQL_TYPES)
    assert [type(getattr(d, f)) for f in DETECTION_FIELDS] == [FIELD_TYPES[f] for f in DETECTION_FIELDS]
    row = dict(d.to_dict(), seq=7, published_utc=None, n_windows="2", score="0.9123")  # as a store might hand it
    assert Detection.from_row(row) == d
    with pytest.raises(ValueError, match="lacks label"):
        Detection.from_row({**d.to_dict(), "label": None})
    with pytest.raises(ValueError, match="n_windows"):
        Detection.from_row({**d.to_dict(), "n_windows": "two"})


def test_store_columns_are_the_records(tmp_path):
    Store(tmp_path / "d.db").close()
    con = sqlite3.connect(tmp_path / "d.db")
    cols = [(c[1], c[2], c[3]) for c in con.execute("PRAGMA table_info(detections)")]  # name, type, notnull
    con.close()
    record_cols = [c for c in cols if c[0] not in STORE_COLUMNS]
    assert [c[0] for c in record_cols] == list(DETECTION_FIELDS)
    assert all(t == SQL_TYPES[FIELD_TYPES[name]] and notnull for name, t, notnull in record_cols), record_cols
    assert {c[0] for c in cols} - set(DETECTION_FIELDS) == set(STORE_COLUMNS)


def test_a_stored_detection_comes_back_as_the_same_record(tmp_path):
    s = Store(tmp_path / "d.db")
    s.insert([det(1), det(2)])
    assert [Detection.from_row(r) for r in s.unpublished(10)] == [det(1), det(2)]
    s.close()


def test_mqtt_payload_and_its_schema_are_the_record():
    schema = payloads.load_schema("detection")
    props = schema["properties"]
    assert set(props) == {"schema", "location", *DETECTION_FIELDS}
    for f in DETECTION_FIELDS:
        allowed = props[f]["type"] if isinstance(props[f]["type"], list) else [props[f]["type"]]
        assert JSON_TYPES[FIELD_TYPES[f]] in allowed, (f, allowed)
    assert set(schema["required"]) <= set(props)
    msg = payloads.detection(det(), {"name": "site", "latitude": 18.3, "longitude": -65.8})
    assert set(msg) == set(props)
    assert {f: msg[f] for f in DETECTION_FIELDS} == det().to_dict()
    jsonschema.validate(json.loads(payloads.encode(msg)), schema)


def test_csv_and_json_columns_are_the_records():
    out = io.StringIO()
    w = CSVWriter(out)
    w.handle([det(1), det(2)])
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == list(DETECTION_FIELDS)
    assert [Detection.from_row(r) for r in rows] == [det(1), det(2)]
    out = io.StringIO()
    j = JSONWriter(out)
    j.out.close = lambda: None  # keep the buffer readable after close()
    j.handle([det(1)])
    j.close()
    assert [Detection.from_row(r) for r in json.loads(out.getvalue())] == [det(1)]


def test_raven_columns_show_record_fields(tmp_path):
    assert set(f for f in RAVEN_FIELDS.values() if f) <= set(DETECTION_FIELDS)
    w = RavenWriter(tmp_path)
    w.begin_source(det().source)
    w.handle([det(1)])
    w.end_source()
    (row,) = list(csv.DictReader(w.written[0].open(), delimiter="\t"))
    d = det(1).to_dict()
    for column, f in RAVEN_FIELDS.items():
        if f is None:
            continue
        want = d[f]
        got = row[column]
        assert (float(got) == pytest.approx(want) if isinstance(want, float) else got == str(want)), (column, got)


def test_one_utc_format_written_and_read():
    t = datetime(2024, 5, 1, 5, 30, 0, 123456, tzinfo=timezone.utc)
    assert format_utc(t) == "2024-05-01T05:30:00.123Z"
    assert format_utc(t, ms=False) == "2024-05-01T05:30:00Z"
    assert parse_utc("2024-05-01T05:30:00.123Z") == t.replace(microsecond=123000)
    assert parse_utc("2024-05-01T07:30:00+02:00") == t.replace(microsecond=0)
    assert parse_utc("2024-05-01T05:30:00") == t.replace(microsecond=0)  # no zone: UTC
    assert format_utc(t.astimezone(timezone(timedelta(hours=-4)))) == format_utc(t)
    now = utc_now()
    assert abs(parse_utc(now) - datetime.now(timezone.utc)) < timedelta(seconds=5) and now.endswith("Z")
    assert sorted([format_utc(t + timedelta(seconds=s)) for s in (5, 0.5, 60)]) == \
        [format_utc(t + timedelta(seconds=s)) for s in (0.5, 5, 60)]  # the text sorts as time does


def test_one_list_of_output_kinds():
    from edge.contract import bundle, interpreter

    assert OUTPUT_KINDS == ("probability", "logit")
    assert bundle.OUTPUT_KINDS is OUTPUT_KINDS and interpreter.OUTPUT_KINDS is OUTPUT_KINDS
