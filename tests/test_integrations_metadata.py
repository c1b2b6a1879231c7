"""Recording start times from GUANO and AudioMoth headers and from file names in a configured zone.

The WAV files are made here: a real PCM WAV (soundfile), then GUANO written
with the ``guano`` package, or an AudioMoth-style ``LIST/INFO/ICMT`` comment
laid out as the firmware writes it (before the data chunk).
"""
from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.sources import FileSource, SourceError, start_time_from_name
from edge.sources.metadata import TimeZoneError, parse_audiomoth_comment, recording_start

SR = 16000
AM_ID = "24F319055FDF2F5B"


def _tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)


def plain_wav(path: Path, seconds: float = 1.0) -> Path:
    sf.write(str(path), _tone(seconds), SR, subtype="PCM_16")
    return path


def guano_wav(path: Path, timestamp: str, **extra: str) -> Path:
    import guano

    plain_wav(path)
    g = guano.GuanoFile(str(path))
    g["Timestamp"] = guano.parse_timestamp(timestamp)
    g["Make"] = "Wildlife Acoustics"
    g["Model"] = "Song Meter Mini 2"
    for k, v in extra.items():
        g[k] = v
    g.write(make_backup=False)
    return path


def _sub(cid: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return cid + struct.pack("<I", len(data)) + data + pad


def audiomoth_wav(path: Path, comment: str, seconds: float = 1.0) -> Path:
    """A 16-bit mono WAV laid out as AudioMoth firmware writes it: fmt, LIST/INFO (ICMT, IART), data."""
    pcm = (np.clip(_tone(seconds), -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, SR, SR * 2, 2, 16)
    info = b"INFO" + _sub(b"ICMT", comment.encode() + b"\0") + _sub(b"IART", f"AudioMoth {AM_ID}".encode() + b"\0")
    body = b"WAVE" + _sub(b"fmt ", fmt) + _sub(b"LIST", info) + _sub(b"data", pcm)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


# Firmware 1.6-style comment (metamoth knows it) and a newer one it does not (the documented prefix still reads).
AM_COMMENT_16 = (f"Recorded at 05:30:00 01/05/2024 (UTC+1) by AudioMoth {AM_ID} at medium gain while battery was "
                 "4.5V and temperature was 21.2C.")
AM_COMMENT_NEW = (f"Recorded at 23:15:10 30/04/2024 (UTC-3:30) by AudioMoth {AM_ID} at medium gain while battery was "
                  "4.5V and temperature was 9.0C. Recording stopped because the file size limit was reached and a "
                  "future field this parser has never seen.")


def test_guano_timestamp_with_offset_is_read_as_utc(tmp_path):
    p = guano_wav(tmp_path / "SMM01234_20240501_000000.wav", "2024-05-01T05:30:00-04:00")
    rt = recording_start(p)
    assert rt.source == "guano"
    assert rt.start_utc == datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)
    assert rt.zone == "UTC-04:00"


def test_guano_local_timestamp_takes_the_configured_zone(tmp_path):
    p = guano_wav(tmp_path / "rec.wav", "2024-07-01T06:00:00")
    assert recording_start(p).start_utc == datetime(2024, 7, 1, 6, 0, tzinfo=timezone.utc)  # no zone: UTC
    rt = recording_start(p, "Europe/Berlin")  # CEST, UTC+2 in July
    assert (rt.source, rt.start_utc) == ("guano", datetime(2024, 7, 1, 4, 0, tzinfo=timezone.utc))
    assert "Europe/Berlin" in rt.zone


def test_audiomoth_comment_known_to_metamoth(tmp_path):
    p = audiomoth_wav(tmp_path / "20240501_053000.WAV", AM_COMMENT_16)
    rt = recording_start(p, "America/New_York")  # the header's own zone wins over the configured one
    assert rt.source == "audiomoth"
    assert rt.start_utc == datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc)
    assert rt.zone == "UTC+01:00"


def test_audiomoth_comment_of_newer_firmware_falls_back_to_the_documented_prefix(tmp_path):
    p = audiomoth_wav(tmp_path / "x.wav", AM_COMMENT_NEW)
    rt = recording_start(p)
    assert rt.source == "audiomoth"
    assert rt.start_utc == datetime(2024, 5, 1, 2, 45, 10, tzinfo=timezone.utc)  # 23:15:10 at UTC-3:30


@pytest.mark.parametrize("comment, expected", [
    (f"Recorded at 12:00:00 01/05/2024 (UTC) by AudioMoth {AM_ID} at gain setting 2 while battery state was 4.6V.",
     datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
    (f"Recorded at 12:00:00 01/05/2024 (UTC+10) by AudioMoth {AM_ID} at gain setting 2 while battery state was 4.6V.",
     datetime(2024, 5, 1, 2, tzinfo=timezone.utc)),
    ("Recorded at 12:00:00 01/05/2024 (UTC-5) by AudioMoth 0000000000000000 and then some text",
     datetime(2024, 5, 1, 17, tzinfo=timezone.utc)),
    ("Recorded at 12:00:00 01/05/2024 by someone else", None),  # not an AudioMoth
    ("AudioMoth said hello", None),
])
def test_parse_audiomoth_comment(comment, expected):
    got = parse_audiomoth_comment(comment)
    assert (got.astimezone(timezone.utc) if got else None) == expected


def test_file_name_in_a_configured_zone(tmp_path):
    p = plain_wav(tmp_path / "garden_20240115_073000.wav")
    assert recording_start(p).start_utc == datetime(2024, 1, 15, 7, 30, tzinfo=timezone.utc)
    winter = recording_start(p, "Europe/Berlin")  # CET, UTC+1
    assert (winter.source, winter.start_utc) == ("file-name", datetime(2024, 1, 15, 6, 30, tzinfo=timezone.utc))
    summer = recording_start(tmp_path / "garden_20240715_073000.wav", "Europe/Berlin")  # need not exist
    assert summer.start_utc == datetime(2024, 7, 15, 5, 30, tzinfo=timezone.utc)
    assert start_time_from_name("x_20240715_073000.wav", "Europe/Berlin") == summer.start_utc
    # early AudioMoth hex names are Unix times: no zone applies
    assert recording_start("5E0BE100.WAV", "Europe/Berlin").start_utc == datetime(2020, 1, 1, tzinfo=timezone.utc)


def test_daylight_saving_fold_and_gap_are_logged(caplog):
    caplog.set_level("WARNING", logger="edge.sources.metadata")
    twice = recording_start("r_20241027_023000.wav", "Europe/Berlin")  # 02:30 happens twice: first (CEST) taken
    assert twice.start_utc == datetime(2024, 10, 27, 0, 30, tzinfo=timezone.utc)
    never = recording_start("r_20240331_023000.wav", "Europe/Berlin")  # 02:30 does not exist: read as CET
    assert never.start_utc == datetime(2024, 3, 31, 1, 30, tzinfo=timezone.utc)
    text = caplog.text
    assert "happens twice" in text and "does not exist" in text


def test_unknown_zone_is_refused_with_its_name(tmp_path):
    with pytest.raises(TimeZoneError, match="Mars/Olympus"):
        recording_start("a_20240101_000000.wav", "Mars/Olympus")
    p = plain_wav(tmp_path / "a_20240101_000000.wav")
    with pytest.raises(SourceError, match=r"a_20240101_000000\.wav.*Mars/Olympus"):
        FileSource(p, SR, timezone="Mars/Olympus")


def test_header_beats_the_file_name_and_caller_beats_both(tmp_path):
    p = audiomoth_wav(tmp_path / "20200101_000000.WAV", AM_COMMENT_16)
    src = FileSource(p, SR)
    assert src.time_source == "audiomoth"
    blocks = list(src.blocks())
    assert blocks[0].start_utc == datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc)
    assert sum(len(b.samples) for b in blocks) == SR  # the LIST chunk is not audio
    given = datetime(2023, 1, 1, tzinfo=timezone.utc)
    src = FileSource(p, SR, start_utc=given)
    assert (src.time_source, src.start_utc) == ("config", given)


def test_guano_file_streams_with_its_time(tmp_path):
    p = guano_wav(tmp_path / "SMM_20200101_000000.wav", "2024-05-01T05:30:00.500+02:00")
    src = FileSource(p, 8000, block_s=0.25)
    assert src.time_source == "guano"
    blocks = list(src.blocks())
    t0 = datetime(2024, 5, 1, 3, 30, 0, 500000, tzinfo=timezone.utc)
    assert blocks[0].start_utc == t0
    assert blocks[-1].start_utc == t0 + timedelta(seconds=blocks[-1].offset_s)


def test_broken_or_missing_headers_fall_back_to_the_name(tmp_path, caplog):
    p = plain_wav(tmp_path / "rec_20240501_053000.wav")
    with open(p, "ab") as f:  # a guan chunk whose declared size runs past the end of the file
        f.write(b"guan" + struct.pack("<I", 4096) + b"Timestamp: garbage")
    rt = recording_start(p)
    assert (rt.source, rt.start_utc) == ("file-name", datetime(2024, 5, 1, 5, 30, tzinfo=timezone.utc))
    q = audiomoth_wav(tmp_path / "rec_20240502_000000.wav", "just a comment, no recorder")
    assert recording_start(q).source == "file-name"
    flac = tmp_path / "rec_20240503_000000.flac"
    sf.write(str(flac), _tone(), SR)
    assert recording_start(flac).source == "file-name"
    assert recording_start(tmp_path / "no-time.wav") is None


def test_replay_stores_the_right_utc_for_local_names_and_headers(tmp_path, tone_bundle_path):
    """``python -m edge replay --timezone``: a local-time file name and a GUANO file, end to end into the store."""
    from fixtures_replay import SR as TONE_SR, TONES, noise, tone_bursts
    from test_replay import replay, rows, tone_args

    d = tmp_path / "recs"
    d.mkdir()
    x = np.concatenate([tone_bursts(TONES["Tonus_midus"], 6, seed=3), noise(3)])
    sf.write(str(d / "garden_20240715_073000.wav"), x, TONE_SR, subtype="PCM_16")
    sf.write(str(d / "SMM_20200101_000000.wav"), x, TONE_SR, subtype="PCM_16")
    import guano

    g = guano.GuanoFile(str(d / "SMM_20200101_000000.wav"))
    g["Timestamp"] = guano.parse_timestamp("2024-07-15T07:30:00-04:00")
    g.write(make_backup=False)
    db = tmp_path / "d.db"
    r = replay(d, *tone_args(tone_bundle_path), "--db", db, "--timezone", "Europe/Berlin", "--format", "json")
    assert r.returncode == 0, r.stderr
    got = {(row["source"].rsplit("/", 1)[-1], row["time_source"]): row["start_utc"] for row in rows(db)}
    named = [t for (src, ts), t in got.items() if src.startswith("garden") and ts == "file-name"]
    headed = [t for (src, ts), t in got.items() if src.startswith("SMM") and ts == "guano"]
    assert named and headed, got
    # 07:30 CEST is 05:30 UTC; the GUANO 07:30-04:00 is 11:30 UTC whatever --timezone says
    assert min(named).startswith("2024-07-15T05:30") and min(headed).startswith("2024-07-15T11:30")
    bad = replay(d, *tone_args(tone_bundle_path), "--no-db", "--timezone", "Europe/Berlln")
    assert bad.returncode == 2 and "Europe/Berlln" in bad.stderr


def test_guano_in_a_float_wav_and_no_warning_without_headers(tmp_path, caplog):
    """The guan chunk is found whatever the sample format (Python's wave module reads only integer PCM)."""
    p = tmp_path / "bat.wav"
    sf.write(str(p), np.stack([_tone(), _tone()], axis=1), SR, subtype="FLOAT")
    text = b"GUANO|Version: 1.0\nMake: Pettersson\nTimestamp: 2024-05-01T22:10:05+02:00\n"
    data = bytearray(p.read_bytes()) + _sub(b"guan", text)
    data[4:8] = struct.pack("<I", len(data) - 8)
    p.write_bytes(bytes(data))
    caplog.set_level("WARNING", logger="edge.sources.metadata")
    rt = recording_start(p)
    assert (rt.source, rt.start_utc) == ("guano", datetime(2024, 5, 1, 20, 10, 5, tzinfo=timezone.utc))
    src = FileSource(p, SR)
    assert src.time_source == "guano" and sum(len(b.samples) for b in src.blocks()) == SR
    q = tmp_path / "rec_20240501_000000.wav"
    sf.write(str(q), np.stack([_tone()] * 3, axis=1), SR, subtype="PCM_24")  # WAVE_FORMAT_EXTENSIBLE, no metadata
    assert recording_start(q).source == "file-name"
    assert caplog.records == []
