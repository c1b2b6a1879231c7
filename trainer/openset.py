"""Open-set figures and precision-floored per-species thresholds.

Thresholds: for each species, the lowest threshold >= ``min_threshold`` at
which window-level precision reaches ``target_precision``, counting as false
positives the hold-out windows of recordings not labelled with that species
*and* every window of the held-out negative audio. A species that cannot
reach the target at any threshold is reported as such (``reached: false``) and
gets the threshold of its best precision if that precision is at least
``fallback_precision`` (0.5), else ``max_threshold``: a species the model cannot
tell from other sounds stays (nearly) silent.

Event rule (``min_windows``, the bundle's operating point): an event needs at
least that many consecutive windows at or above the species' threshold, as the
edge confirms them (edge/detection/postprocess.py). Under the rule a window
counts - for precision and recall - only when it lies in such a run: its
*confirmed score* (``confirmed_scores``) is the highest threshold at which it
still does, the minimum over the best run of ``min_windows`` windows through
it. Tuning and counting on confirmed scores is tuning and counting under the
rule; with ``min_windows`` 1 they are the scores themselves.

False events: on audio none of whose labels is the species, consecutive
(confirmed) windows at or above the species' threshold make one event (as the
edge merges overlapping windows); events per hour = events / hours of that audio.
"""
from __future__ import annotations

import numpy as np


def tune_thresholds(y: np.ndarray, s: np.ndarray, s_neg: np.ndarray, classes: list[str],
                    target_precision: float = 0.9, min_threshold: float = 0.3,
                    max_threshold: float = 0.95, fallback_precision: float = 0.5) -> tuple[dict[str, float], list[dict]]:
    """y, s: hold-out windows of the labelled set (n, C); s_neg: windows of negative audio (m, C)."""
    thr, report = {}, []
    for j, c in enumerate(classes):
        pos = s[y[:, j] > 0, j]
        neg = np.concatenate([s[y[:, j] <= 0, j], s_neg[:, j]]) if len(s_neg) else s[y[:, j] <= 0, j]
        cands = np.unique(np.concatenate([pos, [min_threshold, max_threshold]]))
        cands = cands[(cands >= min_threshold) & (cands <= max_threshold)]
        best = None
        rows = []
        for t in cands:
            tp = float(np.sum(pos >= t))
            fp = float(np.sum(neg >= t))
            prec = tp / (tp + fp) if tp + fp else 0.0
            rows.append((t, prec, tp / max(len(pos), 1)))
        reached = [r for r in rows if r[1] >= target_precision and r[2] > 0]
        if reached:
            best, ok = min(reached, key=lambda r: r[0]), True
        else:
            ok = False
            best = max(rows, key=lambda r: (r[1], -r[0])) if rows else (max_threshold, 0.0, 0.0)
            if best[1] < fallback_precision:
                top = [r for r in rows if r[0] >= max_threshold]
                best = top[0] if top else (max_threshold, 0.0, 0.0)
        t = float(np.clip(best[0], min_threshold, max_threshold))
        thr[c] = t
        report.append({"label": c, "threshold": t, "precision": float(best[1]), "recall": float(best[2]),
                       "reached_target": ok, "positive_windows": int(len(pos)), "negative_windows": int(len(neg))})
    return thr, report


def confirmed_scores(scores: np.ndarray, rec_index: np.ndarray, min_windows: int = 1) -> np.ndarray:
    """Per window and class, the highest threshold at which the window lies in a run of at least
    ``min_windows`` consecutive windows (within its recording, in order) at or above it; -inf where no run
    is that long (a recording shorter than the rule)."""
    s = np.asarray(scores, np.float32)
    if min_windows <= 1:
        return s.copy()
    out = np.full_like(s, -np.inf)
    for r in np.unique(rec_index):
        rows = np.flatnonzero(rec_index == r)
        x = s[rows]
        best = np.full_like(x, -np.inf)
        for a in range(len(x) - min_windows + 1):  # each run of min_windows windows: its minimum
            lo = x[a:a + min_windows].min(axis=0)
            best[a:a + min_windows] = np.maximum(best[a:a + min_windows], lo[None])
        out[rows] = best
    return out


def count_events(scores: np.ndarray, rec_index: np.ndarray, thresholds: np.ndarray,
                 exclude: np.ndarray | None = None, min_windows: int = 1) -> np.ndarray:
    """Per class: runs of at least ``min_windows`` consecutive windows (within a recording, in order) at or
    above the threshold. exclude (n_rec, C) bool: classes a recording is labelled with (their windows are
    not false events)."""
    scores = confirmed_scores(scores, rec_index, min_windows)
    out = np.zeros(scores.shape[1], np.int64)
    for r in np.unique(rec_index):
        rows = np.flatnonzero(rec_index == r)
        on = scores[rows] >= thresholds[None, :]
        starts = on & ~np.vstack([np.zeros((1, on.shape[1]), bool), on[:-1]])
        n = starts.sum(axis=0)
        if exclude is not None:
            n = np.where(exclude[r], 0, n)
        out += n
    return out


def events_per_hour(scores, rec_index, thresholds, hours: float, exclude=None,
                    min_windows: int = 1) -> tuple[float, np.ndarray]:
    ev = count_events(scores, rec_index, thresholds, exclude, min_windows)
    return float(ev.sum() / max(hours, 1e-9)), ev
