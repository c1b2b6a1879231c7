"""Optional knowledge distillation: BirdNET V2.4 embeddings as training targets.

At training time only, the student (MobileNetV2) learns to predict the
teacher's 1024-d embedding of each training window (standardised), and its
species head sits on that predicted embedding. The recorder still runs only
the small int8 student. Teacher targets are computed on a grid of training
windows (the loud ones, as for the plain recipe) and cached on disk.

BirdNET's model is CC BY-NC-SA 4.0: a distilled bundle records the teacher in
``training.teacher`` and the docs say so.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset, active_starts, eval_windows, load_audio

log = logging.getLogger(__name__)

TEACHER_NAME = "BirdNET V2.4 (FP32, CC BY-NC-SA 4.0)"


@dataclass
class TeacherTargets:
    starts: dict[str, np.ndarray]  # recording id -> start frames of the teacher windows
    index: dict[str, np.ndarray]  # recording id -> rows of `emb`
    emb: np.ndarray  # (n, 1024) raw teacher embeddings
    mean: np.ndarray
    std: np.ndarray
    soft: np.ndarray | None = None  # (n, n_classes) teacher-informed window labels ("scores" target)

    def standardized(self, rows) -> np.ndarray:
        return ((self.emb[rows] - self.mean) / self.std).astype(np.float32)


def grid_windows(ds: Dataset, frames: dict[str, np.ndarray], frontend, hop_s: float, percentile: float):
    """(recording id, start frame) of the loud windows on the evaluation grid of every recording."""
    w = eval_windows(ds, frames, frontend, hop_s)
    out: list = []
    for k, rid in enumerate(w.rec_ids):
        ii = np.flatnonzero(w.rec_index == k)
        act = set(active_starts(frames[rid], frontend.n_frames, percentile).tolist())
        loud = [i for i in ii if int(w.starts[i]) in act] or list(ii)
        out.extend((rid, int(w.starts[i])) for i in loud)
    return out


def teacher_embeddings(ds: Dataset, items: list[tuple[str, int]], frontend, cache_dir: Path | None,
                       num_threads: int = 1, progress: bool = True) -> np.ndarray:
    """BirdNET embeddings of windows given as (recording id, start frame); cached per call."""
    from .birdnet import BirdNET

    key = None
    if cache_dir:
        paths = {r.id: r.path for r in ds.recordings}
        sig = [[str(paths[rid].resolve()), paths[rid].stat().st_size, s, frontend.hop_length, frontend.sample_rate]
               for rid, s in items]
        key = Path(cache_dir) / f"birdnet_{hashlib.sha1(json.dumps(sig).encode()).hexdigest()[:20]}.npy"
        if key.exists():
            return np.load(key)
    bn = BirdNET(num_threads=num_threads)
    ratio = bn.sample_rate / frontend.sample_rate
    by_id = {r.id: r for r in ds.recordings}
    audio: dict[str, np.ndarray] = {}
    it = items
    if progress:
        from tqdm import tqdm

        it = tqdm(items, desc="teacher (BirdNET)", unit="win", leave=False)
    out = []
    for rid, s in it:
        if rid not in audio:
            audio.clear()  # items are grouped by recording: keep one decoded recording in memory
            audio[rid] = load_audio(by_id[rid].path, bn.sample_rate)
        a = int(round(s * frontend.hop_length * ratio))
        out.append(bn.invoke(audio[rid][a:a + bn.window_samples])[1])
    emb = np.stack(out).astype(np.float32)
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.save(key, emb)
    return emb


def build_targets(ds: Dataset, frames, frontend, hop_s: float, percentile: float, cache_dir, num_threads: int = 1,
                  progress: bool = True) -> TeacherTargets:
    items = grid_windows(ds, frames, frontend, hop_s, percentile)
    emb = teacher_embeddings(ds, items, frontend, cache_dir, num_threads, progress)
    starts: dict[str, list[int]] = {}
    index: dict[str, list[int]] = {}
    for row, (rid, s) in enumerate(items):
        starts.setdefault(rid, []).append(s)
        index.setdefault(rid, []).append(row)
    mean, std = emb.mean(axis=0), emb.std(axis=0) + 1e-3
    log.info("teacher targets: %d windows from %d recordings", len(items), len(starts))
    return TeacherTargets({k: np.array(v) for k, v in starts.items()}, {k: np.array(v) for k, v in index.items()},
                          emb, mean, std)


def add_soft_labels(tt: TeacherTargets, ds: Dataset, items_rec: list[str], label_weight: float, seed: int = 0,
                    folds: int = 5) -> None:
    """Window labels from the teacher: out-of-fold logistic-regression probabilities on its embeddings
    (folds grouped by recording, so no window is scored by a classifier that saw its recording),
    mixed with the recording's labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    by_id = {r.id: r for r in ds.recordings}
    y = np.stack([ds.targets(by_id[rid]) for rid in items_rec])
    groups = np.array(items_rec)
    p = np.zeros_like(y)
    for tr, te in GroupKFold(n_splits=min(folds, len(set(items_rec)))).split(tt.emb, y, groups):
        sc = StandardScaler().fit(tt.emb[tr])
        xtr, xte = sc.transform(tt.emb[tr]), sc.transform(tt.emb[te])
        for j in range(y.shape[1]):
            if 0 < y[tr, j].sum() < len(tr):
                lr = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced").fit(xtr, y[tr, j])
                p[te, j] = lr.predict_proba(xte)[:, 1]
            else:
                p[te, j] = y[tr, j].mean()
    tt.soft = (label_weight * y + (1 - label_weight) * p).astype(np.float32)
    agree = float(np.mean((p * y).sum(1) / np.maximum(y.sum(1), 1)))
    log.info("teacher window labels: mean out-of-fold probability of the recording's labels %.2f", agree)
