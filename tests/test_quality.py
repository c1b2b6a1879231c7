"""Detection quality machinery: precision-floored thresholds, false-event counting, the augmented pool."""
from __future__ import annotations

import numpy as np
import pytest


def test_thresholds_reach_the_precision_and_honour_the_floor():
    from trainer.openset import tune_thresholds

    rng = np.random.default_rng(0)
    n = 400
    y = np.zeros((n, 3))
    y[:100, 0] = 1
    y[100:200, 1] = 1
    s = rng.uniform(0, 0.2, (n, 3))
    s[:100, 0] = rng.uniform(0.1, 0.9, 100)  # class 0: separable above ~0.2
    s[100:200, 1] = rng.uniform(0.0, 0.3, 100)  # class 1: positives scored low: precision needs a high threshold
    s[200:260, 1] = rng.uniform(0.0, 0.3, 60)
    s_neg = rng.uniform(0, 0.25, (200, 3))
    s_neg[:5, 2] = 0.99  # class 2 has no positives: only false alarms
    thr, rep = tune_thresholds(y, s, s_neg, ["a", "b", "c"], target_precision=0.9, min_threshold=0.3,
                               max_threshold=0.95)
    assert all(0.3 <= t <= 0.95 for t in thr.values())
    assert thr["a"] == pytest.approx(0.3, abs=0.02)  # the floor, not the lower F1-optimal threshold
    r = {x["label"]: x for x in rep}
    assert r["a"]["reached_target"] and r["a"]["precision"] >= 0.9
    tp = np.sum(s[:100, 0] >= thr["a"])
    fp = np.sum(s[100:, 0] >= thr["a"]) + np.sum(s_neg[:, 0] >= thr["a"])
    assert tp / (tp + fp) >= 0.9
    assert not r["c"]["reached_target"] and thr["c"] == 0.95  # no positives: the most conservative threshold


def test_false_events_merge_consecutive_windows_and_skip_labelled_species():
    from trainer.openset import count_events, events_per_hour

    s = np.array([[0.9, 0.1], [0.8, 0.1], [0.1, 0.1], [0.7, 0.9], [0.9, 0.1], [0.2, 0.95]])
    rec = np.array([0, 0, 0, 0, 1, 1])
    thr = np.array([0.5, 0.5])
    assert count_events(s, rec, thr).tolist() == [3, 2]
    labelled = np.array([[False, True], [False, False]])  # recording 0 is labelled with class 1
    assert count_events(s, rec, thr, labelled).tolist() == [3, 1]
    fe, _ = events_per_hour(s, rec, thr, hours=0.5, exclude=labelled)
    assert fe == pytest.approx(8.0)


def test_operating_point_raises_thresholds_above_silence():
    from trainer.holdout import NegWindows, operating_point

    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    s = np.array([[0.9, 0.1], [0.1, 0.8], [0.8, 0.2], [0.2, 0.9]])
    neg = NegWindows(np.zeros((2, 1, 1, 1)), np.array([0, 0]), ["n"], np.zeros((1, 2), bool), 1.0, np.array([0, 1]))
    s_neg = np.array([[0.1, 0.1], [0.1, 0.1]])
    s_sil = np.array([[0.05, 0.6]])  # the model says class 1 on silence
    op = operating_point(y, s, neg, s_neg, s_sil, ["a", "b"], 0.9, 0.3, 0.95)
    assert op["thresholds"]["b"] > 0.6 and op["silence_windows_detected"] == 0
    assert op["false_events_per_hour_negatives"] == 0


def test_pool_recipes_render_the_same_audio_every_time():
    from trainer import pool

    rng = np.random.default_rng(1)
    audio = {"p": (rng.standard_normal(10 * pool.POOL_RATE) * 0.1).astype(np.float32),
             "q": (rng.standard_normal(2 * pool.POOL_RATE) * 0.1).astype(np.float32),  # shorter than a window
             "n": (rng.standard_normal(5 * pool.POOL_RATE) * 0.05).astype(np.float32)}
    recipes = pool.make_recipes([("p", 10.0), ("q", 2.0)], [("n", 5.0)], 300, seed=3)
    assert recipes == pool.make_recipes([("p", 10.0), ("q", 2.0)], [("n", 5.0)], 300, seed=3)
    kinds = {r["kind"] for r in recipes}
    assert kinds == {"mix", "synthetic"} and any(r.get("partner") for r in recipes)
    for r in recipes[:60]:
        a, b = pool.render(r, audio.__getitem__), pool.render(r, audio.__getitem__)
        assert a.shape == (pool.N,) and a.dtype == np.float32 and np.array_equal(a, b)
        assert np.all(np.isfinite(a)) and np.abs(a).max() <= 1.0
    assert not pool.render({"kind": "synthetic", "noise": "silence", "seed": 0}, audio.__getitem__).any()
