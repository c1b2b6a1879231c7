"""FileSource: every WAV kind, other formats, channels, resampling, start times, broken files."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import numpy as np
import pytest
import soundfile as sf

from edge.sources import FileSource, SourceError, find_audio_files, start_time_from_name
from edge.contract.resample import resample

SR = 32000


def signal(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Band-limited test signal (tones well below every Nyquist used) with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    chans = [0.3 * np.sin(2 * np.pi * (440 + 300 * c) * t) + 0.02 * rng.standard_normal(len(t)) for c in range(channels)]
    return np.stack(chans, axis=1).astype(np.float32)


def decode(path, **kw) -> tuple[FileSource, np.ndarray, list]:
    src = FileSource(path, SR, **kw)
    blocks = list(src.blocks(threading.Event()))
    return src, np.concatenate([b.samples for b in blocks]), blocks


WAV_KINDS = [("PCM_U8", 2e-2), ("PCM_16", 1e-3), ("PCM_24", 1e-4), ("PCM_32", 1e-4), ("FLOAT", 1e-4), ("DOUBLE", 1e-4)]


@pytest.mark.parametrize("subtype,tol", WAV_KINDS)
@pytest.mark.parametrize("rate,channels", [(32000, 1), (48000, 2), (44100, 1), (16000, 3), (22050, 2)])
def test_wav_every_kind_rate_and_channel_count(tmp_path, subtype, tol, rate, channels):
    x = signal(2.5, rate, channels)
    path = tmp_path / f"a_{subtype}.wav"
    sf.write(path, x, rate, subtype=subtype)
    src, y, blocks = decode(path)
    assert (src.file_rate, src.channels) == (rate, channels)
    want = x.mean(axis=1)
    if rate != SR:
        want = resample(want, rate, SR)  # the resampler itself is tested in test_resample.py
    assert len(y) == len(want)
    assert y.dtype == np.float32
    assert np.abs(y - want).max() < tol * 4
    assert all(b.samples.ndim == 1 for b in blocks)


@pytest.mark.parametrize("fmt,ext", [("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_other_formats(tmp_path, fmt, ext):
    x = signal(3.0, 44100, 2)
    path = tmp_path / f"b.{ext}"
    sf.write(path, x, 44100, format=fmt)
    src, y, _ = decode(path)
    assert abs(len(y) / SR - 3.0) < 0.1  # MP3 adds encoder delay
    assert 0.1 < np.sqrt(np.mean(y**2)) < 0.4


def test_channel_pick(tmp_path):
    x = np.zeros((SR, 2), np.float32)
    x[:, 1] = 0.5
    path = tmp_path / "two.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    assert np.allclose(decode(path, channel=1)[1], 0.5)
    assert np.allclose(decode(path, channel=0)[1], 0.0)
    assert np.allclose(decode(path)[1], 0.25)
    with pytest.raises(SourceError, match="channel 2 requested but the file has 2"):
        FileSource(path, SR, channel=2)


def test_streams_in_bounded_blocks_with_offsets(tmp_path):
    x = signal(30.0, 48000)
    path = tmp_path / "long.wav"
    sf.write(path, x, 48000, subtype="PCM_16")
    src, y, blocks = decode(path, block_s=2.0)
    assert len(blocks) >= 14
    assert max(len(b.samples) for b in blocks) <= 2.0 * SR
    pos = 0
    for b in blocks:
        assert b.offset_s == pytest.approx(pos / SR)
        assert (b.start_utc - blocks[0].start_utc).total_seconds() == pytest.approx(pos / SR, abs=1e-5)
        pos += len(b.samples)


@pytest.mark.parametrize("name,expected", [
    ("20240501_053000.WAV", datetime(2024, 5, 1, 5, 30, 0, tzinfo=timezone.utc)),
    ("SMU01234_20240501_053000.wav", datetime(2024, 5, 1, 5, 30, 0, tzinfo=timezone.utc)),
    ("site3-2024-05-01_05-30-00.flac", datetime(2024, 5, 1, 5, 30, 0, tzinfo=timezone.utc)),
    ("20240501T053000.wav", datetime(2024, 5, 1, 5, 30, 0, tzinfo=timezone.utc)),
    ("5E8A5B40.WAV", datetime.fromtimestamp(0x5E8A5B40, tz=timezone.utc)),  # early AudioMoth: hex Unix time
    ("recording.wav", None),
    ("XC12345.ogg", None),
    ("20241301_053000.wav", None),  # month 13
])
def test_start_time_from_name(name, expected):
    assert start_time_from_name(name) == expected


def test_time_source(tmp_path):
    x = signal(1.0, SR)
    named = tmp_path / "20240501_053000.wav"
    plain = tmp_path / "plain.wav"
    sf.write(named, x, SR)
    sf.write(plain, x, SR)
    s = FileSource(named, SR)
    assert (s.time_source, s.start_utc) == ("file-name", datetime(2024, 5, 1, 5, 30, tzinfo=timezone.utc))
    given = datetime(2023, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    s = FileSource(named, SR, start_utc=given)
    assert (s.time_source, s.start_utc) == ("config", given)
    now = datetime(2025, 6, 1, tzinfo=timezone.utc)
    s = FileSource(plain, SR, now=now)
    assert (s.time_source, s.start_utc) == ("replay-time", now)


def _wav_bytes(tmp_path) -> bytes:
    p = tmp_path / "ok.wav"
    sf.write(p, signal(4.0, SR), SR, subtype="PCM_16")
    return p.read_bytes()


def test_refuses_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.wav: empty file"):
        FileSource(p, SR)


def test_refuses_header_only(tmp_path):
    p = tmp_path / "header.wav"
    p.write_bytes(_wav_bytes(tmp_path)[:44])
    with pytest.raises(SourceError, match=r"header\.wav: empty audio"):
        FileSource(p, SR)


def test_refuses_non_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("these are field notes, not audio\n" * 20)
    with pytest.raises(SourceError, match=r"notes\.wav: not an audio file"):
        FileSource(p, SR)
    q = tmp_path / "noise.ogg"
    q.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match=r"noise\.ogg: not an audio file"):
        FileSource(q, SR)


def test_refuses_truncated_wav(tmp_path):
    data = _wav_bytes(tmp_path)
    p = tmp_path / "cut.wav"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut\.wav: truncated"):
        FileSource(p, SR)


def test_truncated_compressed_stream_fails_while_decoding(tmp_path):
    p = tmp_path / "whole.mp3"
    sf.write(p, signal(6.0, SR), SR, format="MP3")
    data = p.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    src = FileSource(cut, SR)
    with pytest.raises(SourceError, match=r"cut\.mp3: truncated .* decoded of"):
        list(src.blocks(threading.Event()))


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match="cannot read .*nothere.wav: no such file"):
        FileSource(tmp_path / "nothere.wav", SR)


def test_find_audio_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ["a/2.wav", "a/1.FLAC", "a/b/3.ogg", "a/readme.txt", "a/.hidden.wav"]:
        (tmp_path / rel).write_bytes(b"x")
    files, problems = find_audio_files([tmp_path / "a", tmp_path / "missing.wav", tmp_path / "a" / "readme.txt"])
    names = [f.name for f in files]
    assert names == ["1.FLAC", "2.wav", "3.ogg", "readme.txt"]
    assert [(p.name, why) for p, why in problems] == [("missing.wav", "no such file or directory")]


def test_stop_event_ends_stream(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(p, signal(20.0, SR), SR)
    stop = threading.Event()
    src = FileSource(p, SR, block_s=1.0)
    got = []
    for b in src.blocks(stop):
        got.append(b)
        stop.set()
    assert len(got) == 1
