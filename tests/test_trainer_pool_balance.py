"""distill.pool_balanced: the pool's positive windows are drawn class by class, its negative share kept."""
from types import SimpleNamespace

import numpy as np

from trainer.kd import KDData, KDSampler


def _kd(pool_class):
    n = len(pool_class)
    return KDData(frames={}, grid_rec=[], grid_start=np.zeros(0, int), grid_y=np.zeros((0, 2)),
                  grid_pos=np.zeros(0, bool), grid_class=np.zeros(0, int), grid_emb=np.zeros((0, 4)),
                  grid_ylabel=np.zeros((0, 2)), pool_frames=np.zeros((n, 4, 4), np.float16),
                  pool_y=np.zeros((n, 2), np.float32), negatives=None, birdnet_index=np.zeros(2, int), info={},
                  pool_class=np.asarray(pool_class))


def _draws(balanced: bool, n: int = 20000) -> np.ndarray:
    kd = _kd([0] * 90 + [1] * 10 + [-1] * 20)
    s = KDSampler(kd, SimpleNamespace(params=SimpleNamespace(n_frames=4)), None, seed=0, pool_fraction=1.0,
                  negative_fraction=0.0, pool_balanced=balanced)
    return kd.pool_class[[s._pool_row() for _ in range(n)]]


def test_balanced_pool_draws_each_class_alike_and_keeps_the_negative_share():
    c = _draws(True)
    assert abs(np.mean(c == -1) - 20 / 120) < 0.02
    pos = c[c >= 0]
    assert abs(np.mean(pos == 1) - 0.5) < 0.03


def test_default_pool_draws_uniformly():
    c = _draws(False)
    assert abs(np.mean(c[c >= 0] == 1) - 0.1) < 0.02
