"""The dashboard's parts without a browser: PNG and spectrogram, SVG charts, passwords and
sessions, reviews (own table, never the detection row), keyset paging against a plain ORDER BY."""
from __future__ import annotations

import os
import random
import stat
import struct
import subprocess
import sys
import wave
import zlib
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from edge.outputs.reviews import ReviewError, Reviews, connect, export_reviews
from edge.outputs.store import Store
from edge.outputs.web import charts
from edge.outputs.web.auth import PasswordError, Sessions, hash_password, read_password_file, verify_password, \
    write_password_file
from edge.outputs.web.png import decode_png_size, encode_png
from edge.outputs.web.queries import WEB_MIGRATIONS, Cursor, Queries, iso_z
from edge.types import Detection
from fixtures_web import env_with_repo


def det(i: int, t: datetime, label: str = "Coereba_flaveola", score: float = 0.5) -> Detection:
    s, e = iso_z(t), iso_z(t + timedelta(seconds=3))
    return Detection(id=f"{i:08d}-0000-0000-0000-000000000000", device_id="rec", source="mic", start_utc=s, end_utc=e,
                     offset_s=float(i), end_offset_s=i + 3.0, label=label, common_name=label.split("_")[1].title(),
                     score=score, mean_score=score, n_windows=1, model_version="1", model_sha256="ab" * 32,
                     created_utc=s, time_source="clock")


def unpng(data: bytes) -> tuple[int, int, bytes]:
    """A tiny PNG reader for what encode_png writes (filter 0 rows)."""
    w, h = decode_png_size(data)
    pos, idat = 8, b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = len(raw) // h
    assert all(raw[r * stride] == 0 for r in range(h))
    return w, h, b"".join(raw[r * stride + 1:(r + 1) * stride] for r in range(h))


def test_png_round_trip_and_refusals():
    px = bytes(random.Random(1).randrange(256) for _ in range(7 * 5 * 3))
    w, h, back = unpng(encode_png(px, 7, 5, 3))
    assert (w, h, back) == (7, 5, px)
    with pytest.raises(ValueError, match="expected 105 bytes"):
        encode_png(px[:-1], 7, 5, 3)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png_size(b"GIF89a" + bytes(30))


def write_wav(path, x, rate=32000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(x * 32767, -32768, 32767).astype("<i2").tobytes())


def test_spectrogram_shows_a_tone_at_its_band_in_process_and_in_a_child(tmp_path):
    from edge.contract.frontend import FrontendParams, _hz_to_mel
    from edge.outputs.web.spectrogram import SpectrogramError, cached_png, render_png

    rate, f = 32000, 4000.0
    t = np.arange(rate * 2) / rate
    x = 0.3 * np.sin(2 * np.pi * f * t) + 0.001 * np.random.default_rng(0).standard_normal(len(t))
    write_wav(tmp_path / "tone.wav", x)
    png = render_png(tmp_path / "tone.wav")
    w, h, px = unpng(png)
    p = FrontendParams()
    assert (w, h) == (1 + (len(x) - p.n_fft) // p.hop_length, 2 * p.n_mels)
    rows = np.frombuffer(px, np.uint8).reshape(h, w, 3).astype(int).sum(axis=(1, 2))
    brightest_band = p.n_mels - 1 - int(np.argmax(rows)) // 2  # rows run from high to low frequency
    mels = np.linspace(_hz_to_mel(p.fmin), _hz_to_mel(p.fmax), p.n_mels + 2)[1:-1]
    assert abs(brightest_band - int(np.argmin(abs(mels - _hz_to_mel(f))))) <= 1
    # the standalone dashboard (no numpy loaded) draws in a child process: same bytes, cached
    res = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path;"
                          "from edge.outputs.web.spectrogram import cached_png;"
                          f"d = cached_png(Path({str(tmp_path / 'tone.wav')!r}), Path({str(tmp_path / 'cache')!r}), 'k');"
                          "assert 'numpy' not in sys.modules; sys.stdout.buffer.write(d)"],
                         capture_output=True, env=env_with_repo(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == png and (tmp_path / "cache" / "k.png").read_bytes() == png
    assert cached_png(tmp_path / "tone.wav", tmp_path / "cache", "k") == png
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(SpectrogramError, match="not a readable WAV"):
        render_png(tmp_path / "bad.wav")


def test_charts_scale_to_the_largest_value_and_escape_labels():
    svg = charts.sparkline([0, 2, 4], width=30, height=20)
    assert svg.count("<rect") == 2 and 'height="19"' in svg  # the largest bar fills the height
    bar = charts.bar_chart([1, 3], ["<b>", "x"], title="t & u")
    assert "&lt;b&gt;" in bar and "t &amp; u" in bar and "<b>" not in bar
    tl = charts.timeline([("Mon", [(1.0, 2.5, "on"), (2.0, 2.01, "gap")])], title="t")
    assert tl.count('class="seg-on"') == 1 and tl.count('class="seg-gap"') == 1


def test_password_file_and_sessions(tmp_path):
    pw = tmp_path / "web.password"
    write_password_file(pw, "correct horse")
    stored = read_password_file(pw)
    assert "correct horse" not in pw.read_text() and stored.startswith("scrypt$")
    assert stat.S_IMODE(os.stat(pw).st_mode) == 0o600
    assert verify_password("correct horse", stored) and not verify_password("correct hors", stored)
    assert hash_password("correct horse") != stored  # salted
    with pytest.raises(PasswordError, match="at least 8"):
        write_password_file(pw, "short")
    (tmp_path / "junk").write_text("plain text")
    with pytest.raises(PasswordError, match="not a dawnchorus password file"):
        read_password_file(tmp_path / "junk")
    now = [1000.0]
    s = Sessions(clock=lambda: now[0])
    c = s.new()
    assert s.valid(c) and not s.valid(c[:-1] + ("0" if c[-1] != "0" else "1")) and not Sessions().valid(c)
    tok = s.csrf_token(c)
    assert s.csrf_ok(c, tok) and not s.csrf_ok(c, tok[:-1] + "x") and not s.csrf_ok(s.new(), tok)
    other = s.new()
    s.revoke(other)  # logged out
    assert not s.valid(other) and s.valid(c)
    now[0] += 8 * 24 * 3600
    assert not s.valid(c)


@pytest.fixture
def store(tmp_path):
    st = Store(tmp_path / "d.db")
    yield st
    st.close()


def test_reviews_are_their_own_rows_and_export_by_class(store, tmp_path):
    t0 = datetime(2026, 5, 1, 5, 0, tzinfo=timezone.utc)
    dets = [det(i, t0 + timedelta(seconds=10 * i), ["Coereba_flaveola", "Vireo_latimeri"][i % 2]) for i in range(6)]
    store.insert(dets)
    clips = tmp_path / "clips"
    from edge.outputs.clip_paths import clip_path

    for d in dets[:5]:  # the last one has no clip
        p = clip_path(clips, d.start_utc, d.label, d.id)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_wav(p, np.zeros(32000))
    conn = connect(store.path)
    before = [tuple(r) for r in conn.execute("SELECT * FROM detections ORDER BY seq")]
    rv = Reviews(conn, kept_dir=tmp_path / "kept", clips_dir=clips)
    rv.add(dets[0].id, "correct")
    rv.add(dets[1].id, "species", "Coereba flaveola")  # a scientific name with a space is a label too
    rv.add(dets[2].id, "wrong")
    rv.add(dets[3].id, "wrong")
    rv.add(dets[3].id, "correct")  # changed her mind: the newest counts, both rows stay
    rv.add(dets[5].id, "correct")
    with pytest.raises(ReviewError, match="no detection"):
        rv.add("nope-nope", "correct")
    with pytest.raises(ReviewError, match="verdict must be"):
        rv.add(dets[0].id, "maybe")
    with pytest.raises(ReviewError, match="name the right species"):
        rv.add(dets[0].id, "species", "<script>")
    assert [tuple(r) for r in conn.execute("SELECT * FROM detections ORDER BY seq")] == before
    assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] == 6
    assert rv.latest(dets[3].id)["verdict"] == "correct" and rv.latest(dets[1].id)["label"] == "Coereba_flaveola"
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(f"{d.id}.wav" for d in dets[:4])
    for p in clips.rglob("*.wav"):  # the ring of clips moved on: the reviewed audio was kept
        p.unlink()
    s = export_reviews(rv, tmp_path / "out")
    assert (s.written, s.wrong, s.per_class) == (4, 1, {"Coereba_flaveola": 2, "Vireo_latimeri": 1})
    assert [m[0] for m in s.missing] == [dets[5].id]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav")) == sorted([
        f"Coereba flaveola_Flaveola/{dets[0].id}.wav", f"Coereba flaveola_Flaveola/{dets[1].id}.wav",
        f"Vireo latimeri_Latimeri/{dets[3].id}.wav", f".wrong/Coereba_flaveola/{dets[2].id}.wav"])
    assert len((tmp_path / "out" / "reviews.csv").read_text().splitlines()) == 5


@pytest.mark.parametrize("cap", [10, 10_000])  # score filters read by time (many match) and by score (few)
def test_keyset_pages_equal_a_plain_order_by(store, cap, monkeypatch):
    monkeypatch.setattr("edge.outputs.web.queries.SCORE_PLAN_CAP", cap)
    rng = random.Random(3)
    t0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)
    labels = ["Coereba_flaveola", "Vireo_latimeri", "Todus_mexicanus"]
    # many ties in start_utc: the cursor must carry seq too
    store.insert([det(i, t0 + timedelta(seconds=rng.randrange(0, 3 * 86400, 30)), rng.choice(labels),
                      round(rng.random(), 3)) for i in range(1500)])
    conn = connect(store.path)
    q = Queries(conn, ZoneInfo("America/Puerto_Rico"))
    q.migrate()
    q.migrate()  # a second time: nothing to do
    assert conn.execute("SELECT version FROM aux_schema WHERE name = 'web'").fetchone()[0] == len(WEB_MIGRATIONS)
    for filt in ({}, {"label": "Vireo_latimeri"}, {"min_score": 0.7}, {"day": date(2026, 5, 2)},
                 {"label": "Todus_mexicanus", "min_score": 0.5, "day": date(2026, 5, 1)}):
        where, params = [], []
        if "label" in filt:
            where.append("label = ?"), params.append(filt["label"])
        if "min_score" in filt:
            where.append("score >= ?"), params.append(filt["min_score"])
        if "day" in filt:
            a, b = q.day_bounds(filt["day"])
            where += ["start_utc >= ?", "start_utc < ?"]
            params += [a, b]
        want = [r[0] for r in conn.execute("SELECT id FROM detections" + (" WHERE " + " AND ".join(where) if where else "")
                                           + " ORDER BY start_utc DESC, seq DESC", params)]
        got, pages, before = [], [], None
        while True:
            rows, older, newer = q.detections_page(before=before, limit=37, **filt)
            pages.append((rows, newer))
            got += [r["id"] for r in rows]
            if older is None:
                break
            before = older
        assert got == want, filt
        assert pages[0][1] is None  # the first page has no newer page
        if len(pages) > 2:  # walking back from page 3 with "after" gives page 2 again
            rows, _older, newer = q.detections_page(after=Cursor.decode(pages[2][1].encode()), limit=37, **filt)
            assert [r["id"] for r in rows] == [r["id"] for r in pages[1][0]]
    with pytest.raises(ValueError):
        Cursor.decode("2026-05-01T00:00:00.000Z~x")


def test_day_summary_counts_by_local_hour(store):
    tz = ZoneInfo("Europe/Paris")  # UTC+2 in May
    t = datetime(2026, 5, 1, 4, 30, tzinfo=tz)
    store.insert([det(0, t, "Vireo_latimeri", 0.4), det(1, t + timedelta(minutes=5), "Vireo_latimeri", 0.9),
                  det(2, t + timedelta(hours=2), "Coereba_flaveola", 0.6),
                  det(3, t - timedelta(hours=5), "Coereba_flaveola", 0.6)])  # the day before, locally
    q = Queries(connect(store.path), tz)
    q.migrate()
    rows = {r["label"]: r for r in q.day_summary(date(2026, 5, 1))}
    assert rows["Vireo_latimeri"]["n"] == 2 and rows["Vireo_latimeri"]["hours"][4] == 2
    assert rows["Vireo_latimeri"]["best"] == 0.9 and rows["Vireo_latimeri"]["best_id"] == det(1, t).id
    assert rows["Coereba_flaveola"]["n"] == 1 and rows["Coereba_flaveola"]["hours"][6] == 1
    assert q.latest_day() == date(2026, 5, 1)
    sp = q.species("Coereba_flaveola", days=7)
    assert sp["n"] == 2 and sum(sp["by_day"]) == 2 and sp["by_day"][-1] == 1 and sp["by_hour"][23] == 1


def test_hourly_counts_follow_inserts_and_deletes(store):
    t0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)
    store.insert([det(i, t0 + timedelta(minutes=7 * i), ["Coereba_flaveola", "Vireo_latimeri"][i % 3 == 0])
                  for i in range(100)])  # before the dashboard's first start: filled by its migration
    conn = connect(store.path)
    Queries(conn, timezone.utc).migrate()
    more = [det(i, t0 + timedelta(minutes=7 * i + 3), "Todus_mexicanus") for i in range(100, 160)]
    store.insert(more)  # the store's own inserts (and a repeat that changes nothing)
    store.insert(more[:5])
    conn.execute("DELETE FROM detections WHERE label = 'Vireo_latimeri' AND start_utc < ?",
                 [iso_z(t0 + timedelta(hours=2))])  # as retention would
    truth = {(r[0], r[1]): r[2] for r in conn.execute(
        "SELECT label, substr(start_utc, 1, 13), count(*) FROM detections GROUP BY 1, 2")}
    kept = {(r[0], r[1]): r[2] for r in conn.execute("SELECT label, hour, n FROM web_hourly WHERE n > 0")}
    assert kept == truth and sum(truth.values()) == conn.execute("SELECT count(*) FROM detections").fetchone()[0]
    q = Queries(conn, ZoneInfo("America/Puerto_Rico"))
    assert q.species_counts() == {lab: n for lab, n in conn.execute(
        "SELECT label, count(*) FROM detections GROUP BY label")}


@pytest.mark.parametrize("zone", ["Europe/Paris", "Asia/Kolkata", "America/St_Johns", "Australia/Lord_Howe", "UTC"])
def test_species_hours_and_days_follow_the_zone_across_a_year(store, zone):
    """Detections every 7 h 13 min over a year (each hour of day, both sides of every DST change): the species
    page's counts by local hour and by local day equal the zone's own conversion of each detection."""
    tz = ZoneInfo(zone)
    t0 = datetime(2026, 1, 1, 0, 20, tzinfo=timezone.utc)
    times = [t0 + timedelta(minutes=433 * i) for i in range(1215)]
    store.insert([det(i, t, "Vireo_latimeri") for i, t in enumerate(times)])
    q = Queries(connect(store.path), tz)
    q.migrate()
    s = q.species("Vireo_latimeri", days=366)
    # the hour's bucket is placed by the UTC hour's start, as the page does
    local = [t.replace(minute=0).astimezone(tz) for t in times]
    want_hours = [sum(1 for t in local if t.hour == h) for h in range(24)]
    assert s["by_hour"] == want_hours and s["n"] == len(times)
    want_days = {}
    for t in local:
        want_days[t.date()] = want_days.get(t.date(), 0) + 1
    assert dict(zip(s["days"], s["by_day"])) == {d: want_days.get(d, 0) for d in s["days"]}


def test_a_long_clip_is_compressed_in_time(tmp_path):
    from edge.outputs.web.spectrogram import MAX_WIDTH, render_png

    write_wav(tmp_path / "long.wav", 0.1 * np.sin(np.arange(32000 * 40) * 0.3))
    w, h = decode_png_size(render_png(tmp_path / "long.wav"))
    assert MAX_WIDTH // 2 < w <= MAX_WIDTH and h == 256


def test_review_filters_page_like_a_plain_query(store):
    rng = random.Random(5)
    t0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)
    dets = [det(i, t0 + timedelta(seconds=rng.randrange(0, 86400, 10)), rng.choice(["Coereba_flaveola", "Vireo_latimeri"]),
                round(rng.random(), 3)) for i in range(400)]
    store.insert(dets)
    conn = connect(store.path)
    rv = Reviews(conn)
    q = Queries(conn, timezone.utc)
    q.migrate()
    latest = {}
    for d in rng.sample(dets, 60):
        for _ in range(rng.choice((1, 1, 2))):  # some changed their mind: the newest verdict counts
            v = rng.choice(["correct", "wrong", "species"])
            rv.add(d.id, v, "Todus_mexicanus" if v == "species" else None)
            latest[d.id] = v
    order = [r[0] for r in conn.execute("SELECT id FROM detections ORDER BY start_utc DESC, seq DESC")]
    scores = {d.id: d.score for d in dets}
    for review, keep in [("none", lambda i: i not in latest), ("any", lambda i: i in latest),
                         ("correct", lambda i: latest.get(i) == "correct"), ("wrong", lambda i: latest.get(i) == "wrong"),
                         ("species", lambda i: latest.get(i) == "species")]:
        for min_score in (None, 0.5):
            want = [i for i in order if keep(i) and (min_score is None or scores[i] >= min_score)]
            got, before = [], None
            while True:
                rows, older, _ = q.detections_page(review=review, min_score=min_score, before=before, limit=7)
                got += [r["id"] for r in rows]
                if older is None:
                    break
                before = older
            assert got == want, (review, min_score)
    first = conn.execute("SELECT * FROM detections ORDER BY start_utc DESC, seq DESC LIMIT 1").fetchone()
    nxt = q.step(dict(first), newer=False, unreviewed=True)
    assert nxt == next(i for i in order[1:] if i not in latest)


def test_replay_keeps_a_clip_of_each_detection_file_after_file(tmp_path):
    """clips.enabled in replay, two recordings in one run: every detection has its clip, and each clip holds
    its own file's samples around the event (the clip writer finishes a file before the next one starts)."""
    import subprocess
    import sys
    import threading

    import soundfile as sf

    from edge.cli.replay import demo_files
    from edge.outputs.clip_paths import clip_path
    from edge.sources import FileSource

    x, rate = sf.read(str(demo_files()[0]), dtype="float32")
    sf.write(str(tmp_path / "a.wav"), x, rate, subtype="PCM_16")
    sf.write(str(tmp_path / "b.wav"), x[::-1].copy(), rate, subtype="PCM_16")  # the same birds, backwards
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {{path: {tmp_path / 'd.db'}}}\nclips: {{enabled: true, dir: {tmp_path / 'clips'}}}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "replay", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"),
                        "--config", str(cfg), "--no-progress", "--format", "csv", "--out", str(tmp_path / "out.csv"),
                        "--start-time", "2026-05-01T05:00:00Z"], capture_output=True, text=True, env=env_with_repo(),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [dict(d) for d in connect(tmp_path / "d.db").execute("SELECT * FROM detections ORDER BY seq")]
    assert len({d["source"] for d in rows}) == 2 and len(list((tmp_path / "clips").rglob("*.wav"))) == len(rows)
    audio = {}
    for src in {d["source"] for d in rows}:
        y = np.concatenate([b.samples for b in FileSource(src, 32000).blocks(threading.Event())])
        audio[src] = np.clip(y * 32767.0, -32768, 32767).astype(np.int16)
    for d in rows:
        with wave.open(str(clip_path(tmp_path / "clips", d["start_utc"], d["label"], d["id"]))) as w:
            got = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        a = max(int((d["offset_s"] - 1.0) * 32000), 0)
        want = audio[d["source"]][a:a + len(got)]
        assert len(got) > 32000 and np.array_equal(got, want), d["source"]
