"""The numpy front-end against librosa (melspectrogram + power_to_db), on real bird audio.

Tolerance: 1e-3 dB on every mel bin within 80 dB of the loudest one (the range
the features keep after the top_db clip); 0.25 dB below that, where float32
power sums near the 1e-10 floor differ in their last bits. Normalised features
agree to 1e-3 (they are in units of the window's standard deviation).
"""
from __future__ import annotations

import numpy as np
import pytest

from edge.contract.frontend import FrontendError, FrontendParams, LogMel
from trainer.data import load_audio

librosa = pytest.importorskip("librosa")

CLIPS = ["audio/Parus_major/XC303312.mp3", "audio/Corvus_corax/XC570428.wav", "audio/Fringilla_coelebs/XC1052548.flac"]


def _librosa_db(x, p: FrontendParams, top_db=None):
    s = librosa.feature.melspectrogram(y=x, sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length,
                                       win_length=p.win_length, window="hann", center=False, power=2.0,
                                       n_mels=p.n_mels, fmin=p.fmin, fmax=p.fmax, htk=False, norm="slaney")
    return librosa.power_to_db(s, ref=1.0, amin=p.amin, top_db=top_db)


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("params", [FrontendParams(), FrontendParams(sample_rate=22050, n_fft=512, win_length=400,
                                                                      hop_length=256, n_mels=64, fmin=150, fmax=10000)])
def test_frames_match_librosa(train_data, clip, params):
    x = load_audio(train_data / clip, params.sample_rate)
    ours = LogMel(params).frames(x).T
    ref = _librosa_db(x, params)
    assert ours.shape == ref.shape
    loud = ref > ref.max() - 80.0
    assert loud.mean() > 0.2  # a low-bitrate MP3 has empty high bands
    assert np.abs(ours - ref)[loud].max() < 1e-3
    assert np.abs(ours - ref).max() < 0.25


def test_features_match_librosa_window(train_data):
    p = FrontendParams()
    x = load_audio(train_data / CLIPS[0], p.sample_rate)[: p.window_samples]
    ours = LogMel(p).window_features(x)[:, :, 0]
    ref = _librosa_db(x, p, top_db=p.top_db)
    ref = ref - np.median(ref, axis=1, keepdims=True)
    ref = ref / max(ref.std(), p.std_floor_db)
    assert ours.shape == p.input_shape[:2] == ref.shape
    assert np.abs(ours - ref).max() < 1e-3


def test_stream_frames_slice_into_windows(train_data):
    """A window starting at a multiple of the hop is a slice of the stream's frames (what the edge does)."""
    p = FrontendParams()
    lm = LogMel(p)
    x = load_audio(train_data / CLIPS[0], p.sample_rate)
    stream = lm.frames(x)
    start = 15 * p.hop_length
    alone = lm.frames(x[start:start + p.window_samples])
    np.testing.assert_allclose(stream[15:15 + p.n_frames], alone, atol=1e-4)


def test_parameters_the_edge_cannot_honour_are_refused():
    with pytest.raises(FrontendError, match="normalization"):
        FrontendParams(normalization="pcen").validate()
    with pytest.raises(FrontendError, match="unknown front-end parameter"):
        FrontendParams.from_dict({**FrontendParams().to_dict(), "preemphasis": 0.97})
    with pytest.raises(FrontendError, match="n_fft"):
        FrontendParams(n_fft=1000).validate()


def test_frames_into_a_buffer_and_from_several_threads_are_the_same(train_data):
    """``frames(out=...)`` (the edge writes into its frame buffer) and frames computed by several threads
    at once (each uses its own scratch) equal a plain call; a buffer of the wrong shape is refused."""
    from concurrent.futures import ThreadPoolExecutor

    p = FrontendParams(hop_length=640, n_mels=64)
    lm = LogMel(p)
    x = load_audio(train_data / CLIPS[1], p.sample_rate)[: 20 * p.sample_rate]
    ref = lm.frames(x)
    assert len(ref) > 128  # several scratch batches
    buf = np.full((len(ref) + 3, p.n_mels), np.nan, np.float32)
    assert lm.frames(x, out=buf[1:-2]) is not None
    np.testing.assert_array_equal(buf[1:-2], ref)
    assert np.isnan(buf[0]).all() and np.isnan(buf[-2:]).all()  # nothing written outside
    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(lambda k: lm.frames(x[k * 640:]), range(8)):
            np.testing.assert_allclose(got, ref[len(ref) - len(got):], atol=1e-5)  # rows: BLAS may block them differently
    with pytest.raises(ValueError, match="out must be"):
        lm.frames(x, out=np.zeros((len(ref), p.n_mels + 1), np.float32))
