"""Metrics: the same code scores the float Keras model, the int8 TFLite model and the anchor.

Window level (every evaluation window carries its recording's labels,
secondary labels included): per-class ROC-AUC and average precision, their
macro means over classes with at least one positive and one negative window,
and the padded cmAP of BirdCLEF 2023 (5 rows of true positives added to every
class before the macro AP, so rare classes do not dominate).

Recording level: window scores averaged over a recording; top-1 is correct
when the highest mean score is the recording's primary label.

Per class also: precision/recall/F1 at 0.5 and at a tuned threshold (the one
maximising F1 on these windows; computed on the validation set, so the
"tuned" figures are optimistic, and the thresholds are what goes in the bundle).
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _safe(fn, *args):
    try:
        return float(fn(*args))
    except ValueError:
        return float("nan")


def padded_cmap(y: np.ndarray, s: np.ndarray, padding: int = 5) -> float:
    from sklearn.metrics import average_precision_score

    yp = np.concatenate([y, np.ones((padding, y.shape[1]))])
    sp = np.concatenate([s, np.ones((padding, s.shape[1]))])
    return float(average_precision_score(yp, sp, average="macro"))


def prf(y: np.ndarray, s: np.ndarray, thr: float) -> tuple[float, float, float]:
    pred = s >= thr
    tp = float(np.sum(pred & (y > 0)))
    p = tp / max(float(pred.sum()), 1.0)
    r = tp / max(float((y > 0).sum()), 1.0)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def tune_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Threshold maximising F1 for one class (0.5 when the class has no positives)."""
    from sklearn.metrics import precision_recall_curve

    if y.sum() == 0 or y.sum() == len(y):
        return 0.5
    p, r, t = precision_recall_curve(y, s)
    f = 2 * p * r / np.maximum(p + r, 1e-12)
    i = int(np.argmax(f[:-1]))
    return float(np.clip(t[i], 0.01, 0.99))


def recording_scores(scores: np.ndarray, rec_index: np.ndarray, n_rec: int) -> np.ndarray:
    out = np.zeros((n_rec, scores.shape[1]), np.float64)
    np.add.at(out, rec_index, scores)
    counts = np.bincount(rec_index, minlength=n_rec).clip(min=1)
    return out / counts[:, None]


def compute_metrics(y: np.ndarray, scores: np.ndarray, rec_index: np.ndarray, rec_ids: list[str],
                    rec_primary: list[int | None], classes: list[str], thresholds: dict[str, float] | None = None) -> dict:
    """All figures for one set of window scores. rec_primary[i] is the class index of recording i's
    primary label (None when that label is not one of `classes`)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = (np.asarray(y) > 0).astype(np.int32)
    s = np.asarray(scores, dtype=np.float64)
    per_class, aucs, aps = [], [], []
    tuned = {}
    for j, c in enumerate(classes):
        yj, sj = y[:, j], s[:, j]
        auc = _safe(roc_auc_score, yj, sj) if 0 < yj.sum() < len(yj) else float("nan")
        ap = _safe(average_precision_score, yj, sj) if yj.sum() > 0 else float("nan")
        thr = thresholds[c] if thresholds and c in thresholds else tune_threshold(yj, sj)
        tuned[c] = thr
        p5, r5, f5 = prf(yj, sj, 0.5)
        pt, rt, ft = prf(yj, sj, thr)
        n_recs = len({rec_index[i] for i in np.flatnonzero(yj)})
        per_class.append({"label": c, "support_windows": int(yj.sum()), "support_recordings": n_recs,
                          "roc_auc": auc, "average_precision": ap,
                          "precision_at_0.5": p5, "recall_at_0.5": r5, "f1_at_0.5": f5,
                          "threshold": thr, "precision_at_threshold": pt, "recall_at_threshold": rt,
                          "f1_at_threshold": ft})
        if not np.isnan(auc):
            aucs.append(auc)
        if not np.isnan(ap):
            aps.append(ap)
    rs = recording_scores(s, rec_index, len(rec_ids))
    known = [i for i, p in enumerate(rec_primary) if p is not None]
    top1 = rs.argmax(axis=1)
    correct = [int(top1[i] == rec_primary[i]) for i in known]
    present = [j for j in range(len(classes)) if y[:, j].sum() > 0]
    predictions = [{"recording": rec_ids[i],
                    "label": classes[p] if (p := rec_primary[i]) is not None else None,
                    "predicted": classes[int(top1[i])], "score": float(rs[i, top1[i]]),
                    "top3": [[classes[int(k)], float(rs[i, k])] for k in np.argsort(-rs[i])[:3]],
                    "n_windows": int(np.sum(rec_index == i))} for i in range(len(rec_ids))]
    return {
        "macro_roc_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "macro_average_precision": float(np.mean(aps)) if aps else float("nan"),
        "cmap_padded": padded_cmap(y[:, present], s[:, present]) if present else float("nan"),
        "recording_top1_accuracy": float(np.mean(correct)) if correct else float("nan"),
        "n_windows": int(len(y)),
        "n_recordings": int(len(rec_ids)),
        "n_recordings_scored_top1": len(known),
        "n_classes_scored": len(aucs),
        "per_class": per_class,
        "thresholds": tuned,
        "predictions": predictions,
    }


def summary(metrics: dict) -> dict:
    keys = ("macro_roc_auc", "macro_average_precision", "cmap_padded", "recording_top1_accuracy",
            "n_windows", "n_recordings")
    return {k: metrics[k] for k in keys if k in metrics}


def score_keras(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def score_int8(model_bytes: bytes, x: np.ndarray, num_threads: int = 2, output_kind: str = "probability") -> np.ndarray:
    """Scores of a full-integer model through the edge's interpreter (same quantize/dequantize)."""
    from edge.contract.interpreter import Int8Model

    m = Int8Model(model_bytes, num_threads=num_threads, output_kind=output_kind)
    return m.predict_batch(x)
