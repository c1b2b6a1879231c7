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


def _in_long_runs(s, rec, t, m):
    """Brute force: windows at or above t inside a run of >= m consecutive such windows of one recording."""
    on = s >= t
    out = np.zeros_like(on)
    for r in np.unique(rec):
        rows = np.flatnonzero(rec == r)
        for j in range(s.shape[1]):
            i = 0
            while i < len(rows):
                if not on[rows[i], j]:
                    i += 1
                    continue
                k = i
                while k < len(rows) and on[rows[k], j]:
                    k += 1
                if k - i >= m:
                    out[rows[i:k], j] = True
                i = k
    return out


def test_event_rule_counts_only_runs_of_min_windows():
    from trainer.openset import confirmed_scores, count_events

    s = np.array([[0.9], [0.1], [0.6], [0.7], [0.2], [0.8], [0.8], [0.9], [0.95]])
    rec = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1])  # the last window is a recording of its own
    c = confirmed_scores(s, rec, 2)[:, 0]
    # a lone peak confirms only as low as its neighbour's score; a one-window recording never
    assert c[:8] == pytest.approx([0.1, 0.1, 0.6, 0.6, 0.2, 0.8, 0.8, 0.8]) and c[8] == -np.inf
    thr = np.array([0.5])
    assert count_events(s, rec, thr).tolist() == [4] and count_events(s, rec, thr, min_windows=2).tolist() == [2]
    assert count_events(s, rec, np.array([0.65]), min_windows=2).tolist() == [1]
    assert count_events(s, rec, thr, min_windows=3).tolist() == [1]
    rng = np.random.default_rng(2)  # against the brute force, at every threshold
    s = rng.uniform(0, 1, (300, 3))
    rec = np.sort(rng.integers(0, 12, 300))
    for m in (1, 2, 3):
        c = confirmed_scores(s, rec, m)
        for t in (0.2, 0.5, 0.7, 0.9):
            assert np.array_equal(c >= t, _in_long_runs(s, rec, t, m))


def test_thresholds_tuned_under_the_event_rule_honour_the_precision_floor():
    """Lone high windows on foreign audio keep precision below target under one window; under two windows
    in a row they do not count, the threshold drops to where confirmed windows reach precision 0.9, never
    below the floor; false events are counted under the same rule."""
    from trainer.holdout import NegWindows, operating_point

    rng = np.random.default_rng(3)
    n_rec, per = 20, 10
    rec = np.repeat(np.arange(n_rec), per)
    y = np.zeros((n_rec * per, 2))
    y[: 10 * per, 0] = 1
    y[10 * per:, 1] = 1
    s = rng.uniform(0.0, 0.25, y.shape)
    s[: 10 * per, 0] = np.repeat(rng.uniform(0.35, 0.9, 10), per) + rng.uniform(-0.02, 0.02, 10 * per)  # calls
    s[10 * per:, 0][::2] = rng.uniform(0.45, 0.95, 5 * per)  # class 1's recordings: lone class-0 peaks
    s_neg = rng.uniform(0, 0.2, (400, 2))
    s_neg[::7, 0] = rng.uniform(0.5, 0.99, len(s_neg[::7]))  # foreign audio: lone peaks
    neg_rec = np.repeat(np.arange(8), 50)
    neg = NegWindows(np.zeros((400, 1, 1, 1)), neg_rec, [f"n{i}" for i in range(8)], np.zeros((8, 2), bool), 0.5,
                     np.zeros(400))
    s_sil = np.zeros((1, 2))
    one = operating_point(y, s, neg, s_neg, s_sil, ["a", "b"], 0.9, 0.3, 0.95, min_windows=1, val_rec_index=rec)
    two = operating_point(y, s, neg, s_neg, s_sil, ["a", "b"], 0.9, 0.3, 0.95, min_windows=2, val_rec_index=rec)
    assert two["min_windows"] == 2 and one["min_windows"] == 1
    t1, t2 = one["thresholds"]["a"], two["thresholds"]["a"]
    assert 0.3 <= t2 < t1  # the rule lets the threshold come down, not below the floor
    conf = _in_long_runs(s, rec, t2, 2)[:, 0]
    conf_neg = _in_long_runs(s_neg, neg_rec, t2, 2)[:, 0]
    tp = np.sum(conf & (y[:, 0] > 0))
    assert tp > 0 and tp / (np.sum(conf) + np.sum(conf_neg)) >= 0.9
    assert two["per_class"][0]["reached_target"]
    assert one["false_events_by_class"]["a"] > 0 and two["false_events_by_class"]["a"] == 0
    assert two["false_events_per_hour_negatives"] == 0
    with pytest.raises(ValueError, match="needs val_rec_index"):
        operating_point(y, s, neg, s_neg, s_sil, ["a", "b"], 0.9, 0.3, 0.95, min_windows=2)


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
