"""Hold-out audio beyond the labelled split: held-out negatives and silence.

``negative_windows`` cuts the held-out negative recordings (never trained on)
into windows at the bundle's hop; ``silence_windows`` are digital silence, a
constant and a faint dither. ``operating_point`` tunes per-species thresholds
for precision on the labelled hold-out plus the negatives (trainer/openset.py)
under the event rule ``min_windows`` (windows count only inside a run of that
many consecutive windows at or above the threshold, as the edge confirms
events), raises any threshold a silence window reaches (silence is a constant
stream: one window reaching it is a run of any length), and reports false
events per hour on the negatives and on silence under the same rule.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .data import pad_frames, window_starts
from .openset import confirmed_scores, events_per_hour, tune_thresholds

log = logging.getLogger(__name__)


@dataclass
class NegWindows:
    x: np.ndarray  # (n, mels, frames, 1) features
    rec_index: np.ndarray
    rec_ids: list[str]
    labels: np.ndarray  # (n_rec, C) bool: model classes heard in that recording (secondary labels)
    hours: float
    offsets: np.ndarray  # start sample at the front-end rate


def negative_windows(recs, frame_cache, logmel, classes: list[str], hop_s: float) -> NegWindows:
    from .negatives import targets

    p = logmel.params
    hop_f = max(1, int(round(hop_s * p.sample_rate / p.hop_length)))
    xs: list = []
    idx: list = []
    ids: list = []
    labs: list = []
    offs: list = []
    secs = 0.0
    for r in recs:
        try:
            f = frame_cache.frames(r.path)
        except Exception as exc:  # noqa: BLE001
            log.warning("held-out negative %s unreadable: %s", r.id, exc)
            continue
        secs += (len(f) - 1) * p.hop_length / p.sample_rate + p.n_fft / p.sample_rate
        fp = pad_frames(f, p.n_frames)
        k = len(ids)
        ids.append(r.id)
        labs.append(targets(r, classes) > 0)
        for s in window_starts(len(f), p.n_frames, hop_f):
            xs.append(logmel.features(fp[s:s + p.n_frames].astype(np.float32)))
            idx.append(k)
            offs.append(int(s) * p.hop_length)
    x = np.stack(xs) if xs else np.zeros((0, *p.input_shape), np.float32)
    return NegWindows(x, np.array(idx, np.int64), ids, np.array(labs, bool).reshape(len(ids), len(classes)),
                      secs / 3600.0, np.array(offs))


def silence_windows(logmel, n: int = 3) -> np.ndarray:
    """Digital silence, a DC constant and -90 dBFS dither: windows that must never be a bird."""
    p = logmel.params
    rng = np.random.default_rng(0)
    audio = [np.zeros(p.window_samples, np.float32), np.full(p.window_samples, 0.1, np.float32),
             (rng.standard_normal(p.window_samples) * 3e-5).astype(np.float32)][:n]
    return np.stack([logmel.window_features(a) for a in audio])


def operating_point(y_val: np.ndarray, s_val: np.ndarray, neg: NegWindows, s_neg: np.ndarray, s_sil: np.ndarray,
                    classes: list[str], target_precision: float, min_threshold: float,
                    max_threshold: float, min_windows: int = 1, val_rec_index: np.ndarray | None = None) -> dict:
    """Thresholds tuned under the event rule ``min_windows`` and the figures at them; ``thresholds`` and
    ``min_windows`` are the bundle's operating point. A rule above 1 needs ``val_rec_index`` (the hold-out
    windows' recordings, windows of a recording in time order)."""
    c_val, c_neg = s_val, s_neg  # window scores as they are, or confirmed under the rule (trainer/openset.py)
    if min_windows > 1:
        if val_rec_index is None:
            raise ValueError("operating_point: min_windows > 1 needs val_rec_index (which recording each window "
                             "is of)")
        c_val = confirmed_scores(s_val, val_rec_index, min_windows)
        c_neg = confirmed_scores(s_neg, neg.rec_index, min_windows)
    thr, report = tune_thresholds(y_val, c_val, c_neg, classes, target_precision, min_threshold, max_threshold)
    for j, c in enumerate(classes):  # silence never reaches a threshold
        if len(s_sil) and s_sil[:, j].max() >= thr[c]:
            thr[c] = float(min(0.99, s_sil[:, j].max() + 0.01))
            report[j]["threshold"] = thr[c]
            report[j]["raised_above_silence"] = True
    t = np.array([thr[c] for c in classes])
    fe_h, ev = events_per_hour(s_neg, neg.rec_index, t, neg.hours, neg.labels, min_windows) if len(s_neg) \
        else (0.0, None)
    sil = int((s_sil >= t[None]).any(axis=1).sum()) if len(s_sil) else 0
    return {"thresholds": thr, "min_windows": int(min_windows), "per_class": report,
            "target_precision": target_precision, "min_threshold": min_threshold, "max_threshold": max_threshold,
            "false_events_per_hour_negatives": fe_h, "negative_hours": neg.hours,
            "false_events_by_class": {c: int(e) for c, e in zip(classes, ev)} if ev is not None else {},
            "silence_windows_detected": sil,
            "species_below_target": [r["label"] for r in report if not r["reached_target"]]}
