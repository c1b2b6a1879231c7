"""Resampling (edge/contract/resample.py): files in any blocks and from any block equal the whole signal;
the live stream is within rounding of it; trainer and edge get the same samples."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.contract.frontend import FrontendParams, LogMel
from edge.contract.resample import FileResampler, StreamResampler, resample
from edge.sources import FileSource

SR = 32000
DEMO = sorted((Path(__file__).resolve().parents[1] / "edge" / "demo").glob("*.ogg"))


def feed(r, x: np.ndarray, seed: int) -> np.ndarray:
    """x through resampler ``r`` in blocks of random sizes (0 to 9000 samples), then its flush."""
    rng = np.random.default_rng(seed)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 9000))
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.flush())
    return np.concatenate(parts)


RATES = [8000, 16000, 22050, 24000, 44100, 48000, 96000]


@pytest.mark.parametrize("rate_in", RATES)
def test_a_file_in_any_blocks_equals_the_whole_signal(rate_in):
    x = np.random.default_rng(rate_in).standard_normal(int(rate_in * 23.7)).astype(np.float32)
    whole = resample(x, rate_in, SR)
    assert whole.dtype == np.float32
    assert len(whole) == round(len(x) * SR / rate_in)
    y = feed(FileResampler(rate_in, SR), x, seed=rate_in)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, whole)


def blocks_one_shot(x: np.ndarray, rate_in: int) -> np.ndarray:
    """The file path's definition, block by block with soxr.resample (a new resampler per block)."""
    import soxr

    from edge.contract.resample import QUALITY

    r = FileResampler(rate_in, SR)
    outs, b = [], 0
    while b * r.block_in < len(x):
        lo = max(0, b * r.block_in - r.margin_in)
        last = (b + 1) * r.block_in + r.margin_in >= len(x)
        out = soxr.resample(x[lo : len(x) if last else (b + 1) * r.block_in + r.margin_in], rate_in, SR,
                            quality=QUALITY)
        skip = r.margin_out if lo > 0 else 0
        outs.append(out[skip:] if last else out[skip : skip + r.block_out])
        if last:
            break
        b += 1
    return np.concatenate(outs)


@pytest.mark.parametrize("rate_in", [22050, 44100, 48000])
def test_the_reused_resampler_gives_what_a_new_one_per_block_gives(rate_in):
    """FileResampler clears one soxr stream between blocks instead of designing the filter again per block:
    the samples must be those of soxr.resample on every block."""
    x = np.random.default_rng(7).standard_normal(int(rate_in * 17.9)).astype(np.float32)
    np.testing.assert_array_equal(resample(x, rate_in, SR), blocks_one_shot(x, rate_in))


@pytest.mark.parametrize("rate_in", [22050, 44100, 48000])
def test_a_file_read_from_any_block_gives_the_same_samples(rate_in):
    """What lets a long file be split over processes with exactly the results of one."""
    x = np.random.default_rng(1).standard_normal(int(rate_in * 35.3)).astype(np.float32)
    whole = resample(x, rate_in, SR)
    for block in (1, 2, 3):
        r = FileResampler(rate_in, SR, start_block=block)
        part = feed(r, x[r.input_start(block) :], seed=block)
        np.testing.assert_array_equal(part, whole[r.output_start(block) :])
        assert r.block_of_output(r.output_start(block)) == block


@pytest.mark.parametrize("rate_in", RATES)
def test_the_live_stream_is_within_rounding_of_the_file_path(rate_in):
    x = np.random.default_rng(rate_in).standard_normal(int(rate_in * 23.7)).astype(np.float32)
    live = feed(StreamResampler(rate_in, SR), x, seed=rate_in)
    whole = resample(x, rate_in, SR)
    assert len(live) == len(whole)
    assert np.abs(live - whole).max() < 1e-5


def test_same_rate_is_the_identity():
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    r = StreamResampler(SR, SR)
    assert r.identity
    np.testing.assert_array_equal(r.process(x), x)
    assert len(r.flush()) == 0
    np.testing.assert_array_equal(resample(x, SR, SR), x)


@pytest.mark.parametrize("rate_in", [22050, 44100, 48000])
def test_keeps_the_front_end_band_and_removes_aliases(rate_in):
    """A tone inside the front-end's band (<= fmax) passes at its level and its frequency;
    above the output Nyquist (48 -> 32 kHz) it is filtered out, not folded back into the band."""
    t = np.arange(rate_in * 2) / rate_in
    fmax = FrontendParams().fmax
    for f in (1000.0, 5000.0, fmax):
        if f >= rate_in / 2:
            continue
        y = resample((0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32), rate_in, SR)[SR // 4 : -SR // 4]
        spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        peak = np.argmax(spec) * SR / len(y)
        assert abs(peak - f) < 5, (f, peak)
        assert np.sqrt(np.mean(y**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    if rate_in > SR:
        y = resample((0.5 * np.sin(2 * np.pi * 20000.0 * t)).astype(np.float32), rate_in, SR)[SR // 4 : -SR // 4]
        assert np.sqrt(np.mean(y**2)) < 0.5 / np.sqrt(2) * 1e-3  # > 60 dB down, where a fold would land at 12 kHz


def test_close_to_the_polyphase_filter_it_replaced():
    """On real audio, libsoxr and scipy's resample_poly (the old edge/trainer filter) differ by noise only."""
    from scipy.signal import resample_poly

    if not DEMO:
        pytest.skip("no bundled demo recording")
    x, rate = sf.read(str(DEMO[0]), dtype="float32", frames=20 * 32000)
    x48 = resample_poly(x.astype(np.float64), 3, 2).astype(np.float32)
    a = resample(x48, 48000, SR)
    b = resample_poly(x48.astype(np.float64), 2, 3)[: len(a)]
    assert len(a) == len(x)
    err = np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2))
    assert err < 0.01, err  # -40 dB (measured: about -50 dB)


@pytest.mark.parametrize("rate,fmt,subtype", [(22050, "FLAC", "PCM_16"), (44100, "WAV", "PCM_24"),
                                              (48000, "WAV", "FLOAT")])
def test_trainer_and_edge_decode_and_resample_the_same(tmp_path, rate, fmt, subtype):
    """trainer.data.load_audio (whole file) and the edge's FileSource (4 s blocks, streamed) give the same
    samples, hence the same log-mel frames, from a real recording at a recorder's rate."""
    from trainer.data import load_audio

    if not DEMO:
        pytest.skip("no bundled demo recording")
    x, sr = sf.read(str(DEMO[0]), dtype="float32", frames=25 * 32000)
    path = tmp_path / f"rec_{rate}.{fmt.lower()}"
    sf.write(path, resample(x, sr, rate), rate, format=fmt, subtype=subtype)

    trained = load_audio(path, SR)
    src = FileSource(path, SR, block_s=4.0)
    served = np.concatenate([b.samples for b in src.blocks(threading.Event())])
    np.testing.assert_array_equal(served, trained)
    lm = LogMel(FrontendParams())
    np.testing.assert_array_equal(lm.frames(served), lm.frames(trained))
    assert abs(len(trained) - len(x)) <= 1
