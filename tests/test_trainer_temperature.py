"""distill.temperature: targets are learnt as sigmoid(logit / T), and the trained scores layer is scaled back by T."""
from types import SimpleNamespace

import numpy as np
import pytest

from trainer.config import TrainConfig, TrainConfigError, load_train_config
from trainer.kd import KDData, KDSampler, at_temperature


def _logit(p):
    return np.log(p / (1 - p))


def test_targets_at_temperature_divide_the_logit_and_keep_the_order():
    t = np.array([[0.0, 0.0025, 0.12, 0.5, 0.88, 1.0]], np.float32)
    assert at_temperature(t, 1.0) is t
    got = at_temperature(t, 2.0)
    np.testing.assert_allclose(_logit(got[0, 1:5]), _logit(t[0, 1:5]) / 2, rtol=1e-4)
    assert got[0, 3] == 0.5 and np.all(np.diff(got[0]) > 0)
    assert 0 < got[0, 0] < 2e-3 and 1 - 2e-3 < got[0, -1] < 1  # hard 0 and 1 stay finite, near the ends


def test_sampler_hands_out_targets_at_its_temperature():
    n = 8
    y = np.linspace(0.01, 0.99, n * 2, dtype=np.float32).reshape(n, 2)
    kd = KDData(frames={}, grid_rec=[], grid_start=np.zeros(0, int), grid_y=np.zeros((0, 2)),
                grid_pos=np.zeros(0, bool), grid_class=np.zeros(0, int), grid_emb=np.zeros((0, 4)),
                grid_ylabel=np.zeros((0, 2)), pool_frames=np.zeros((n, 4, 4), np.float16), pool_y=y,
                negatives=None, birdnet_index=np.zeros(2, int), info={})
    logmel = SimpleNamespace(params=SimpleNamespace(n_frames=4), features=lambda w: w[..., None])
    s = KDSampler(kd, logmel, SimpleNamespace(enabled=False), seed=0, pool_fraction=1.0, negative_fraction=0.0,
                  temperature=3.0)
    x, got, _ = s.batch(64)
    assert set(np.round(_logit(got.ravel()) * 3, 3)) <= set(np.round(_logit(y.ravel()), 3))


def test_scores_layer_is_scaled_to_the_teachers_scale():
    from trainer.config import ModelSection
    from trainer.model import build_model
    from trainer.kd import to_teacher_scale

    parts = build_model(ModelSection(weights="none", mode="scratch", alpha=0.35), (32, 96, 1), 3)
    x = np.random.default_rng(0).standard_normal((2, 32, 96, 1)).astype(np.float32)
    before = parts.model.predict(x, verbose=0)
    to_teacher_scale(parts, 2.5)
    after = parts.model.predict(x, verbose=0)
    np.testing.assert_allclose(_logit(after), 2.5 * _logit(before), rtol=1e-3, atol=1e-3)


def test_temperature_is_checked(tmp_path):
    assert TrainConfig().distill.temperature == 1.0
    p = tmp_path / "t.yaml"
    p.write_text("distill: {temperature: 0}\n")
    with pytest.raises(TrainConfigError, match="distill.temperature"):
        load_train_config(p)
