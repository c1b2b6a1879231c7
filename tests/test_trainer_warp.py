"""augment.warp: a fractional shift along the mel axis and a stretch in time, on dB frames, off by default."""
from types import SimpleNamespace

import numpy as np
import pytest

from trainer.augment import warp
from trainer.config import AugmentSection, TrainConfig, TrainConfigError, load_train_config
from trainer.kd import KDData, KDSampler


def _peak(frames, mel):
    w = np.full((101, 32), -80.0, np.float32)
    w[:, mel] = 0.0  # a tone held through the window
    w[frames, :] = 0.0  # a click across every band
    return w


def test_off_by_default_draws_nothing_and_returns_the_frames():
    a = TrainConfig().augment
    assert a.freq_shift_bands == 0 and a.time_stretch == 0
    w = _peak(50, 10)
    rng = np.random.default_rng(0)
    assert warp(w, a, rng) is w
    assert rng.random() == np.random.default_rng(0).random()  # the recipe's random stream is untouched


def test_a_whole_band_shift_moves_the_tone_by_one_band_and_keeps_the_shape():
    a = AugmentSection(freq_shift_bands=1.0, warp_prob=1.0)
    seen = set()
    rng = np.random.default_rng(3)
    for _ in range(200):
        out = warp(_peak(50, 10), a, rng)
        assert out.shape == (101, 32) and out.dtype == np.float32
        # the tone's energy centre (in the power domain) moves by at most one band
        p = np.power(10.0, out[0] / 10.0)
        centre = float((p * np.arange(32)).sum() / p.sum())
        assert 9.0 - 1e-4 <= centre <= 11.0 + 1e-4
        seen.add(round(centre))
    assert seen == {9, 10, 11}  # both directions, and sometimes (nearly) none


def test_a_stretch_moves_a_click_away_from_or_towards_the_centre():
    a = AugmentSection(time_stretch=0.2, warp_prob=1.0)
    rng = np.random.default_rng(1)
    where = []
    for _ in range(200):
        out = warp(_peak(20, 5), a, rng)  # the click is 30 frames before the centre (frame 50)
        col = out[:, 20]
        where.append(float(np.argmax(col)))
        assert out[50, 5] == 0.0  # the tone (every frame) stays
    # rate r samples frame 50 + (i - 50) * r, so the click lands at 50 - 30 / r: 12.5 (r 0.8) to 25 (r 1.2)
    assert min(where) >= 50 - 30 / 0.8 - 1 and max(where) <= 50 - 30 / 1.2 + 1
    assert min(where) < 18 and max(where) > 22


def test_the_distillation_sampler_warps_its_windows():
    n = 16
    frames = np.stack([_peak(50, 10)[:, :] for _ in range(n)]).astype(np.float16)
    kd = KDData(frames={}, grid_rec=[], grid_start=np.zeros(0, int), grid_y=np.zeros((0, 2)),
                grid_pos=np.zeros(0, bool), grid_class=np.zeros(0, int), grid_emb=np.zeros((0, 4)),
                grid_ylabel=np.zeros((0, 2)), pool_frames=frames, pool_y=np.full((n, 2), 0.5, np.float32),
                negatives=None, birdnet_index=np.zeros(2, int), info={})
    logmel = SimpleNamespace(params=SimpleNamespace(n_frames=101), features=lambda w: w.T[..., None].copy())
    aug = AugmentSection(freq_shift_bands=2.0, warp_prob=1.0, time_masks=0, freq_masks=0)
    s = KDSampler(kd, logmel, aug, seed=0, pool_fraction=1.0, negative_fraction=0.0)
    x, y, _ = s.batch(32)
    assert x.shape == (32, 32, 101, 1)
    moved = [int(np.argmax(xi[:, 0, 0])) for xi in x]
    assert len(set(moved)) > 1 and all(8 <= m <= 12 for m in moved)
    x0, _, _ = s.batch(8, augment=False)
    assert all(int(np.argmax(xi[:, 0, 0])) == 10 for xi in x0)


@pytest.mark.parametrize("text, key", [("augment: {time_stretch: 0.6}\n", "augment.time_stretch"),
                                       ("augment: {freq_shift_bands: -1}\n", "augment.freq_shift_bands")])
def test_warp_options_are_checked(tmp_path, text, key):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(TrainConfigError, match=key):
        load_train_config(p)
