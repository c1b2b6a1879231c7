"""Distillation from BirdNET's species outputs on the audio the student sees.

Training windows come from three sources, each with a soft target per class:

- the 1 s grid of every training recording (the 17 species' recordings),
- the 1 s grid of the training part of the negative sets (other birds, other
  places; their secondary labels name model classes where heard),
- the pool of augmented windows (``trainer.pool``): mixup, background, noise,
  gain, clipping and synthetic negatives, each scored by the teacher on that
  very mixed audio.

Soft targets (documented in docs/training.md):

- a class BirdNET knows (matched by scientific name): the teacher's sigmoid
  score of that window, raised to ``label_floor`` when the window's recording
  (or a mixed-in recording) carries that label *and* the teacher hears the
  species at all there (its score >= ``hear_threshold``): the recording label
  confirms a faint teacher detection;
- a class BirdNET does not know: ``label_weight`` x the recording label +
  (1 - label_weight) x an out-of-fold logistic regression on the teacher's
  embeddings (folds grouped by recording; a pool window is scored by the fold
  that did not see its main recording);
- synthetic negatives (silence, hum, noise, tones...): all zeros.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pool as poolmod
from . import teacher as T
from .augment import spec_masks, warp
from .data import FrameCache, Recording, pad_frames, save_atomic
from .negatives import read_negatives, targets as neg_targets

log = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float32), -30, 30)))


@dataclass
class KDData:
    frames: dict[str, np.ndarray]  # recording id -> dB frames (positives and negatives)
    grid_rec: list[str]  # per grid window: recording id
    grid_start: np.ndarray  # per grid window: start frame
    grid_y: np.ndarray  # (n_grid, C) soft targets
    grid_pos: np.ndarray  # bool: from a positive (model-class) recording
    grid_class: np.ndarray  # primary class index (-1 for negatives)
    grid_emb: np.ndarray  # (n_grid, 1024) teacher embeddings (for the embeddings + LR anchor)
    grid_ylabel: np.ndarray  # (n_grid, C) recording labels
    pool_frames: np.ndarray  # (n_pool, n_frames, n_mels) float16
    pool_y: np.ndarray  # (n_pool, C)
    negatives: object  # negatives.NegativeSet
    birdnet_index: np.ndarray
    info: dict
    grid_aux: np.ndarray | None = None  # (n_grid, K) auxiliary teacher targets (distill.aux), float16
    pool_aux: np.ndarray | None = None  # (n_pool, K)
    pool_class: np.ndarray | None = None  # per pool window: its main recording's primary class (-1: negative)


def _resolve_negatives(data_root: Path, names: list[str]) -> list[Path]:
    out = []
    for n in names:
        p = Path(n)
        if not p.is_absolute() and not p.exists():
            p = (data_root / n).resolve()
        out.append(p)
    return out


def _unknown_lr(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, cols: list[int], folds: int = 5):
    """Out-of-fold LR probabilities for the classes in `cols`, and the per-fold models."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    p = np.zeros((len(emb), len(cols)), np.float32)
    models, fold_of = [], {}
    x = emb.astype(np.float32)
    for f, (tr, te) in enumerate(GroupKFold(n_splits=folds).split(x, y, groups)):
        sc = StandardScaler().fit(x[tr])
        ms = []
        for k, j in enumerate(cols):
            if 0 < y[tr, j].sum() < len(tr):
                lr = LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced").fit(sc.transform(x[tr]), y[tr, j])
                p[te, k] = lr.predict_proba(sc.transform(x[te]))[:, 1]
            else:
                lr = None
            ms.append(lr)
        models.append((sc, ms))
        for g in set(groups[te]):
            fold_of[g] = f
    return p, models, fold_of


def _apply_lr(models, fold: int, emb: np.ndarray, n_cols: int) -> np.ndarray:
    sc, ms = models[fold]
    x = sc.transform(emb.astype(np.float32))
    return np.stack([m.predict_proba(x)[:, 1] if m is not None else np.zeros(len(x)) for m in ms], 1) \
        if n_cols else np.zeros((len(x), 0), np.float32)


def at_temperature(t: np.ndarray, temperature: float) -> np.ndarray:
    """Targets (probabilities) seen at a temperature: sigmoid(logit(t) / T); T = 1 returns them unchanged."""
    if temperature == 1.0:
        return t
    p = np.clip(np.asarray(t, np.float32), 1e-6, 1 - 1e-6)
    return _sigmoid(np.log(p / (1 - p)) / temperature).astype(np.float32)


def to_teacher_scale(parts, temperature: float) -> None:
    """A model trained on targets at temperature T (distill.temperature) outputs sigmoid(logit / T): scaling
    its 'scores' layer by T makes it score on the teacher's scale (the scores' ranking within a class is kept)."""
    if temperature == 1.0:
        return
    layer = parts.head.get_layer("scores")
    layer.set_weights([w * np.float32(temperature) for w in layer.get_weights()])
    log.info("scores layer scaled by the distillation temperature %g", temperature)


def soft_targets(logits: np.ndarray, y: np.ndarray, bn_idx: np.ndarray, lr_p: np.ndarray, floor: float,
                 hear: float, label_weight: float) -> np.ndarray:
    t = np.zeros(y.shape, np.float32)
    known = np.flatnonzero(bn_idx >= 0)
    unknown = np.flatnonzero(bn_idx < 0)
    s = _sigmoid(logits[:, bn_idx[known]])
    t[:, known] = np.maximum(s, floor * y[:, known] * (s >= hear))
    if len(unknown):
        t[:, unknown] = label_weight * y[:, unknown] + (1 - label_weight) * lr_p
    return t


def _mean_sigmoid(tables: list[np.ndarray], chunk: int = 2048) -> np.ndarray:
    """Mean teacher score per BirdNET class over the rows of `tables`, a chunk at a time (the full
    (rows, 6522) float32 sigmoid of grid and pool would be about 0.9 GB)."""
    total = sum(_sigmoid(t[i:i + chunk]).sum(0, dtype=np.float64) for t in tables for i in range(0, len(t), chunk))
    return total / max(1, sum(len(t) for t in tables))


def aux_targets(kind: str, grid_logits: np.ndarray, grid_emb: np.ndarray, pool_logits: np.ndarray,
                pool_emb: np.ndarray, k: int, temperature: float):
    """Auxiliary teacher targets for grid and pool windows (all of them training windows), and what they are.

    logits: the k BirdNET species with the highest mean score over those windows, as
    sigmoid(logit / temperature): the teacher's view of every bird it hears, not only the model's classes;
    embedding: the 1024-d embedding, standardised per dimension with those windows' mean and spread."""
    if kind == "logits":
        cols = np.sort(np.argsort(-_mean_sigmoid([grid_logits, pool_logits]))[:k])
        f = lambda lg: _sigmoid(lg[:, cols].astype(np.float32) / temperature).astype(np.float16)  # noqa: E731
        return f(grid_logits), f(pool_logits), {"aux": "logits", "aux_classes": int(len(cols)),
                                                "aux_temperature": temperature}
    ref = np.concatenate([grid_emb, pool_emb]).astype(np.float32)
    mu, sd = ref.mean(0), ref.std(0) + 1e-3
    g = lambda e: ((e.astype(np.float32) - mu) / sd).astype(np.float16)  # noqa: E731
    return g(grid_emb), g(pool_emb), {"aux": "embedding", "aux_dim": int(ref.shape[1])}


def build(ds, train_recs: list[Recording], frame_cache: FrameCache, cfg, data_root: Path,
          progress: bool = True) -> KDData:
    """Teacher outputs (cached) and soft targets for grid and pool windows of the training recordings."""
    from .birdnet import LABELS_NAME, birdnet_model_path

    d = cfg.distill
    t0 = time.time()
    fe = frame_cache.frontend
    if abs(fe.window_s - poolmod.WINDOW_S) > 1e-9:
        raise ValueError(f"distill.target 'pool' needs frontend.window_s {poolmod.WINDOW_S} (the teacher's window)")
    classes = ds.classes
    labels = (birdnet_model_path().parent / LABELS_NAME).read_text(encoding="utf-8").splitlines()
    bn_idx = T.birdnet_index([ds.names.get(c, (c.replace("_", " "), ""))[0] for c in classes], labels)
    unknown = [j for j in range(len(classes)) if bn_idx[j] < 0]
    if unknown:
        log.info("teacher does not know %s: recording labels + embedding LR for those", [classes[j] for j in unknown])
    negs = read_negatives(_resolve_negatives(data_root, d.negatives), classes, d.negatives_held_out)
    cache = Path(d.cache_dir) if d.cache_dir else T.default_teacher_cache()
    recs = list(train_recs) + list(negs.train)
    keys = {r.id: T.file_key(r.path) for r in recs}
    paths = {keys[r.id]: str(r.path) for r in recs}
    grid = T.grid_table(paths, cache, d.hop_s, d.workers, progress)
    by_key = {keys[r.id]: r for r in recs}
    frames = {}
    have = set(grid.keys)
    for r in recs:
        if keys[r.id] not in have:
            continue
        try:
            frames[r.id] = frame_cache.frames(r.path)
        except Exception as exc:  # noqa: BLE001
            log.warning("negative %s unreadable: %s", r.id, exc)
    idx = ds.index()
    ratio = fe.sample_rate / poolmod.POOL_RATE
    grid_rec = [by_key[k].id for k in grid.keys]
    grid_start = np.array([int(round(o * ratio / fe.hop_length)) for o in grid.offsets])
    ylab = {r.id: (ds.targets(r) if r.label else neg_targets(r, classes)) for r in recs}
    y = np.stack([ylab[rid] for rid in grid_rec])
    groups = np.array(grid.keys)
    lr_p, lr_models, fold_of = _unknown_lr(grid.emb, y, groups, unknown) if unknown else (
        np.zeros((len(y), 0), np.float32), None, {})
    grid_y = soft_targets(grid.logits, y, bn_idx, lr_p, d.label_floor, d.hear_threshold, d.label_weight)
    grid_pos = np.array([bool(by_key[k].label) for k in grid.keys])
    grid_class = np.array([idx.get(by_key[k].label, -1) for k in grid.keys])
    # the pool
    pos = [(keys[r.id], _dur(r.path)) for r in train_recs]
    neg = [(keys[r.id], _dur(r.path)) for r in negs.train]
    recipes = poolmod.make_recipes(pos, neg, d.pool_size, seed=d.pool_seed)
    ptab = T.pool_table(recipes, paths, cache, d.workers, progress)
    ykey = {keys[r.id]: ylab[r.id] for r in recs}
    py = np.zeros((len(recipes), len(classes)), np.float32)
    for i, recipe in enumerate(recipes):
        if recipe["kind"] != "mix":
            continue
        v = ykey[recipe["rec"]].copy()
        for part in ("partner", "background"):
            if recipe.get(part):
                v = np.maximum(v, ykey[recipe[part]])
        py[i] = v
    plr = np.zeros((len(recipes), len(unknown)), np.float32)
    if unknown:
        for f in range(len(lr_models)):
            sel = [i for i, r in enumerate(recipes) if r["kind"] == "mix" and fold_of.get(r["rec"], 0) == f]
            if sel:
                plr[sel] = _apply_lr(lr_models, f, ptab.emb[sel], len(unknown))
    pool_y = soft_targets(ptab.logits, py, bn_idx, plr, d.label_floor, d.hear_threshold, d.label_weight)
    pool_class = np.array([idx.get(by_key[r["rec"]].label, -1) if r["kind"] == "mix" else -1 for r in recipes])
    synth = np.array([r["kind"] == "synthetic" for r in recipes])
    pool_y[synth] = 0.0
    pool_frames = pool_features(recipes, paths, frame_cache, cache, progress)
    grid_aux = pool_aux = None
    aux_info: dict = {}
    if d.aux != "none":
        grid_aux, pool_aux, aux_info = aux_targets(d.aux, grid.logits, grid.emb, ptab.logits, ptab.emb,
                                                   d.aux_classes, d.aux_temperature)
    info = {**aux_info, "teacher": "BirdNET V2.4", "grid_windows": int(len(grid_rec)), "pool_windows": int(len(recipes)),
            "negative_recordings_train": len(negs.train), "negative_recordings_held_out": len(negs.held_out),
            "unknown_to_teacher": [classes[j] for j in unknown], "seconds": round(time.time() - t0, 1)}
    log.info("distillation data: %s", json.dumps(info))
    return KDData(frames, grid_rec, grid_start, grid_y, grid_pos, grid_class, grid.emb, y, pool_frames, pool_y, negs,
                  bn_idx, info, grid_aux, pool_aux, pool_class)


def _dur(path) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # noqa: BLE001
        return 3.0


def pool_features(recipes: list[dict], paths: dict[str, str], frame_cache: FrameCache, cache: Path,
                  progress: bool = True) -> np.ndarray:
    """dB frames of every pool window for the student's front-end (cached per chunk and front-end)."""
    from scipy.signal import resample_poly

    from .data import load_audio

    fe = frame_cache.frontend
    fp = frame_cache._fp
    out = []
    audio: dict[str, np.ndarray] = {}

    def get(key):
        if key not in audio:
            audio[key] = load_audio(paths[key], poolmod.POOL_RATE)
        return audio[key]

    chunks = [recipes[i:i + T.CHUNK] for i in range(0, len(recipes), T.CHUNK)]
    it = chunks
    if progress:
        from tqdm import tqdm

        it = tqdm(chunks, desc="pool features", unit="chunk", leave=False)
    for c in it:
        f = Path(cache) / "pool_frames" / (hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:24]
                                           + f"_{fp}.npy")
        if f.exists():
            out.append(np.load(f))
            continue
        rows = []
        for r in c:
            x = poolmod.render(r, get)
            if fe.sample_rate != poolmod.POOL_RATE:
                x = resample_poly(x, fe.sample_rate, poolmod.POOL_RATE).astype(np.float32)
            rows.append(pad_frames(frame_cache.logmel.frames(x), fe.n_frames)[:fe.n_frames].astype(np.float16))
        arr = np.stack(rows)
        f.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(f, lambda fh, arr=arr: np.save(fh, arr))
        out.append(arr)
    return np.concatenate(out)


def _groups(cls: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    """Row indices of each class among the rows ``keep`` selects, classes in order."""
    return [np.flatnonzero(cls == c) for c in sorted(set(cls[keep].tolist()))]


class KDSampler:
    """Training batches (features, soft targets, None) from grid and pool windows."""

    def __init__(self, kd: KDData, logmel, aug, seed: int, pool_fraction: float, negative_fraction: float,
                 jitter: int = 5, pool_balanced: bool = False, temperature: float = 1.0):
        self.kd, self.logmel, self.aug = kd, logmel, aug
        # the targets as the model learns them (distill.temperature), converted once
        self.grid_y, self.pool_y = at_temperature(kd.grid_y, temperature), at_temperature(kd.pool_y, temperature)
        self.rng = np.random.default_rng(seed)
        self.nf = logmel.params.n_frames
        self.pool_fraction, self.negative_fraction, self.jitter = pool_fraction, negative_fraction, jitter
        self.by_class = _groups(kd.grid_class, kd.grid_pos)
        self.neg_rows = np.flatnonzero(~kd.grid_pos)
        self.padded = {rid: pad_frames(f, self.nf) for rid, f in kd.frames.items()}
        # pool_balanced: the pool's negative share is kept; its positive windows are drawn class by class
        self.pool_groups: list[np.ndarray] = []
        if pool_balanced and kd.pool_class is not None and len(kd.pool_y):
            self.pool_neg = np.flatnonzero(kd.pool_class < 0)
            self.pool_groups = _groups(kd.pool_class, kd.pool_class >= 0)

    def _pick(self, rows: np.ndarray) -> int:
        return int(rows[self.rng.integers(len(rows))])

    def _pick_balanced(self, groups: list[np.ndarray]) -> int:
        """A class first, then one of its rows: every class drawn alike."""
        return self._pick(groups[self.rng.integers(len(groups))])

    def _pool_row(self) -> int:
        if not self.pool_groups:
            return int(self.rng.integers(len(self.kd.pool_y)))
        if self.rng.random() < len(self.pool_neg) / len(self.kd.pool_y):
            return self._pick(self.pool_neg)
        return self._pick_balanced(self.pool_groups)

    def _aux(self, table: np.ndarray | None, row: int):
        return None if table is None else table[row].astype(np.float32)

    def _grid(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        rid = self.kd.grid_rec[row]
        f = self.padded[rid]
        s = int(self.kd.grid_start[row])
        if self.jitter:
            s += int(self.rng.integers(-self.jitter, self.jitter + 1))
        s = int(np.clip(s, 0, len(f) - self.nf))
        return f[s:s + self.nf].astype(np.float32), self.grid_y[row]

    def sample(self, augment: bool = True):
        u = self.rng.random()
        if u < self.pool_fraction and len(self.kd.pool_y):
            i = self._pool_row()
            w, y = self.kd.pool_frames[i].astype(np.float32), self.pool_y[i]
            aux = self._aux(self.kd.pool_aux, i)
        else:
            if u < self.pool_fraction + self.negative_fraction and len(self.neg_rows):
                row = self._pick(self.neg_rows)
            else:
                row = self._pick_balanced(self.by_class)
            w, y = self._grid(row)
            aux = self._aux(self.kd.grid_aux, row)
        aug = augment and self.aug.enabled
        x = self.logmel.features(warp(w, self.aug, self.rng) if aug else w)
        if aug:
            x = spec_masks(x, self.aug, self.rng)
        return x, y, aux

    def batch(self, size: int, augment: bool = True):
        xs, ys, auxs = zip(*(self.sample(augment) for _ in range(size)))
        aux = None if auxs[0] is None else np.stack(auxs).astype(np.float32)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32), aux
