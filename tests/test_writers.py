"""Output writers: Raven selection tables (one per file), CSV, JSON, table."""
from __future__ import annotations

import csv
import io
import json

from edge.outputs.store import DETECTION_COLUMNS
from edge.outputs.writers import RAVEN_COLUMNS, CSVWriter, JSONWriter, RavenWriter, TableWriter, make_writer
from edge.contract.record import Detection


def det(source: str, offset: float, label: str = "Setophaga_adelaidae", score: float = 0.91) -> Detection:
    return Detection(id=f"{source}-{offset}-{label}", device_id="dev1", source=source,
                     start_utc="2024-05-01T05:30:00.000Z", end_utc="2024-05-01T05:30:03.000Z", offset_s=offset,
                     end_offset_s=offset + 3.0, label=label, common_name="Adelaide's Warbler", score=score,
                     mean_score=0.8, n_windows=1, model_version="1.0", model_sha256="a" * 64,
                     created_utc="2024-05-01T06:00:00.000Z", time_source="file-name")


def test_raven_one_selection_table_per_file(tmp_path):
    w = RavenWriter(tmp_path / "out", low_hz=50, high_hz=14000)
    w.begin_source("/rec/site1/20240501_053000.wav")
    w.handle([det("/rec/site1/20240501_053000.wav", 6.0), det("/rec/site1/20240501_053000.wav", 1.5, "Vireo_latimeri")])
    w.end_source()
    w.begin_source("/rec/site1/empty.wav")
    w.end_source()
    w.close()
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["20240501_053000.dawnchorus.selection.table.txt", "empty.dawnchorus.selection.table.txt"]
    text = (tmp_path / "out" / files[0]).read_text()
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    assert tuple(rows[0]) == RAVEN_COLUMNS
    assert rows[0][:7] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [r["Selection"] for r in body] == ["1", "2"]
    assert [r["Species Code"] for r in body] == ["Vireo_latimeri", "Setophaga_adelaidae"]  # sorted by time
    assert body[0]["View"] == "Spectrogram 1" and body[0]["Channel"] == "1"
    assert float(body[0]["Begin Time (s)"]) == 1.5 and float(body[0]["End Time (s)"]) == 4.5
    assert float(body[0]["Low Freq (Hz)"]) == 50 and float(body[0]["High Freq (Hz)"]) == 14000
    assert float(body[1]["Confidence"]) == 0.91 and body[1]["Common Name"] == "Adelaide's Warbler"
    assert all(len(r) == len(RAVEN_COLUMNS) for r in rows)
    empty = (tmp_path / "out" / files[1]).read_text().splitlines()
    assert empty == ["\t".join(RAVEN_COLUMNS)]


def test_csv_round_trip():
    buf = io.StringIO()
    w = CSVWriter(buf)
    dets = [det("/a.wav", 0.0), det("/a.wav", 3.0, "Vireo_latimeri")]
    w.handle(dets)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert list(rows[0]) == list(DETECTION_COLUMNS)
    assert [r["label"] for r in rows] == ["Setophaga_adelaidae", "Vireo_latimeri"]
    assert float(rows[1]["offset_s"]) == 3.0 and rows[0]["common_name"] == "Adelaide's Warbler"


def test_json_array(tmp_path):
    out = tmp_path / "d.json"
    w = make_writer("json", str(out))
    w.handle([det("/a.wav", 0.0)])
    w.handle([det("/b.wav", 1.5)])
    w.close()
    data = json.loads(out.read_text())
    assert [d["source"] for d in data] == ["/a.wav", "/b.wav"] and data[0] == det("/a.wav", 0.0).to_dict()


def test_table_sorted_per_file():
    buf = io.StringIO()
    w = TableWriter(buf)
    w.begin_source("/a.wav")
    w.handle([det("/a.wav", 9.0)])
    w.handle([det("/a.wav", 1.5, "Vireo_latimeri")])
    w.end_source()
    w.begin_source("/b.wav")
    w.end_source()
    lines = buf.getvalue().splitlines()
    assert lines[1] == "/a.wav"
    assert "Vireo_latimeri" in lines[3] and "Setophaga_adelaidae" in lines[4]
    assert lines[-2:] == ["/b.wav", "  no detections"]
