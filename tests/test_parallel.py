"""Replay on every core (edge/service/parallel.py): pieces of a file are exactly the whole file's samples and
windows; ``--jobs 2`` stores exactly what ``--jobs 1`` stores, events merged across the pieces of a split file."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest
import soundfile as sf
from fixtures_replay import SR, TONES, noise, tone_bursts

from edge.contract.resample import resample
from edge.service.parallel import InlineExecutor, Unit, WorkSettings, analyse, plan, results_in_order, split_points
from edge.sources import FileSource


def write(path, x: np.ndarray, rate: int, fmt: str | None = None) -> None:
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format=fmt or path.suffix[1:].upper(),
                      subtype="VORBIS" if path.suffix == ".ogg" else "PCM_16") as fh:
        for i in range(0, len(x), rate * 5):  # in blocks (libsndfile's Vorbis encoder)
            fh.write(x[i : i + rate * 5])


def tones_program(seconds: float) -> np.ndarray:
    """Mid tone bursts all through (one event across any split), high ones in the middle third, noise."""
    x = tone_bursts(TONES["Tonus_midus"], seconds, seed=3) + noise(seconds, seed=5)
    third = int(seconds / 3 * SR)
    x[third : 2 * third] += tone_bursts(TONES["Tonus_highus"], seconds / 3, seed=4)[: third]
    return x


@pytest.mark.parametrize("rate,ext", [(32000, "wav"), (48000, "flac"), (44100, "ogg"), (22050, "flac")])
def test_a_span_of_a_file_is_exactly_those_samples_of_the_whole(tmp_path, rate, ext):
    x = np.random.default_rng(rate).standard_normal(int(rate * 47.3)).astype(np.float32) * 0.1
    path = tmp_path / f"a.{ext}"
    write(path, x, rate)
    whole = np.concatenate([b.samples for b in FileSource(path, SR).blocks(threading.Event())])
    assert len(whole) == FileSource(path, SR).output_samples
    for first, end in [(0, 100_000), (400_000, 1_000_003), (999_680, None), (1_300_000, 1_300_001)]:
        blocks = list(FileSource(path, SR, span=(first, end)).blocks(threading.Event()))
        got = np.concatenate([b.samples for b in blocks])
        np.testing.assert_array_equal(got, whole[first:end])
        assert blocks[0].offset_s == pytest.approx(first / SR)
        assert max(len(b.samples) for b in blocks) <= 4 * SR


@pytest.mark.parametrize("n_samples,pieces", [(SR * 200, 3), (SR * 61 + 17, 2), (SR * 7, 4), (SR * 2, 2),
                                               (SR * 3600, 7)])
def test_split_points_cover_every_window_once(n_samples, pieces):
    hop, span = 48000, 95_744  # 1.5 s windows of 300 frames of 1024 samples every 320
    windows = 0 if n_samples < span else 1 + (n_samples - span) // hop
    pts = split_points(n_samples, hop, span, pieces)
    assert pts[0][:2] == (0, 0) and pts[-1][2] is None
    firsts = [k for k, _, _ in pts] + [windows]
    assert firsts == sorted(set(firsts)) or len(pts) == 1
    for (k0, first, end), k1 in zip(pts, firsts[1:]):
        assert first == k0 * hop
        if end is not None:  # a middle piece ends with the last sample of its last window
            assert end == (k1 - 1) * hop + span


def test_pieces_score_exactly_the_windows_of_the_whole_file(tmp_path, tone_bundle_path):
    key = tone_bundle_path.parent / "signing.pub"
    path = tmp_path / "20240501_050000.flac"
    write(path, resample(tones_program(200.0), SR, 48000), 48000)
    settings = WorkSettings(str(tone_bundle_path), str(key), 32 << 20, None, None, "rec")
    src = settings.open(str(path), SR)
    from edge.contract.bundle import load_bundle
    from edge.contract.signing import load_public_key

    units = plan([(0, src)], load_bundle(tone_bundle_path, load_public_key(key)), None, jobs=2, piece_s=60)
    assert len(units) == 3 and [u.last for u in units] == [False, False, True]
    parts = list(results_in_order(InlineExecutor(), units, settings))
    whole = analyse(Unit(0, str(path)), settings)
    assert [w for r in parts for w in r.offsets] == whole.offsets
    assert [w for r in parts for w in r.utcs] == whole.utcs
    np.testing.assert_array_equal(np.concatenate([r.scores for r in parts]), whole.scores)
    assert whole.windows == 1 + int((200 - 3) / 1.5) + 1  # every 1.5 s, and the tail window
