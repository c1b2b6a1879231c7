"""Training: split, head on cached backbone features, fine-tune, evaluate, quantize, bundle.

``run(data, out_dir, cfg)`` is what ``python -m trainer train`` does; the
bench calls the same function with its own split so that every figure comes
from one code path.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.contract.frontend import LogMel

from .augment import WindowSampler
from .config import TrainConfig
from .data import Dataset, FrameCache, Windows, eval_windows, features_batch, grouped_folds, grouped_split, read_dataset

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dawnchorus" / "features"


@dataclass
class Prepared:
    ds: Dataset
    frames: dict[str, np.ndarray]
    logmel: LogMel
    train: Dataset
    val: Dataset
    val_windows: Windows
    x_val: np.ndarray
    teacher: Any = None  # distill.TeacherTargets when distilling
    kd: Any = None  # kd.KDData when distilling with target 'pool'


@dataclass
class Result:
    prepared: Prepared
    parts: Any
    history: list[dict] = field(default_factory=list)
    float_scores: np.ndarray | None = None
    int8_scores: np.ndarray | None = None
    float_metrics: dict | None = None
    int8_metrics: dict | None = None
    model_bytes: bytes | None = None
    bundle_path: Path | None = None
    timings: dict = field(default_factory=dict)
    open_set: dict | None = None  # {"int8": operating point, "float": ...} on held-out negatives and silence
    neg_windows: Any = None  # holdout.NegWindows
    neg_scores: dict | None = None  # {"int8": (n, C), "float": (n, C), "silence_int8": ..., "silence_float": ...}
    inference: dict | None = None  # segment inference (trainer/segment.py): its spec and the per-window int8 figures
    selftest_features: np.ndarray | None = None  # the bundle's self-test input (None: the first hold-out window)


def prepare(data: str | Path | Dataset, cfg: TrainConfig, split: tuple[list[str], list[str]] | None = None,
            progress: bool = True) -> Prepared:
    frontend = cfg.frontend.params()
    ds = data if isinstance(data, Dataset) else read_dataset(data)
    cache = FrameCache(frontend, cfg.data.cache_dir or default_cache_dir())
    frames = cache.load(ds, progress=progress)
    if split is None:
        if cfg.data.folds > 1:
            val_ids = grouped_folds(ds, cfg.data.folds, cfg.train.seed)[0]
            train_ids = [r.id for r in ds.recordings if r.id not in set(val_ids)]
        else:
            train_ids, val_ids = grouped_split(ds, cfg.data.val_fraction, cfg.train.seed)
    else:
        train_ids, val_ids = split
    train, val = ds.subset(train_ids), ds.subset(val_ids)
    missing = sorted(set(ds.classes) - {r.label for r in train.recordings})
    if missing:
        from .data import DatasetError

        raise DatasetError(f"class(es) with no training recording after the split: {missing}")
    logmel = LogMel(frontend)
    vw = eval_windows(val, frames, frontend, cfg.data.eval_hop_s or cfg.bundle.hop_s)
    sel = None
    if cfg.train.max_val_windows and len(vw) > cfg.train.max_val_windows:
        sel = np.sort(np.random.default_rng(cfg.train.seed).choice(len(vw), cfg.train.max_val_windows, replace=False))
        vw = Windows(vw.rec_ids, vw.starts[sel], vw.rec_index[sel], vw.y[sel])
    x_val = features_batch(logmel, frames, vw)
    log.info("split: %d training and %d validation recordings, %d validation windows",
             len(train.recordings), len(val.recordings), len(vw))
    return Prepared(ds, frames, logmel, train, val, vw, x_val)


def _quick_auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _quick_top1(p: Prepared, s: np.ndarray) -> float:
    from .evaluate import recording_scores

    rs = recording_scores(s, p.val_windows.rec_index, len(p.val_windows.rec_ids))
    idx = p.ds.index()
    by_id = {r.id: r for r in p.val.recordings}
    want = np.array([idx[by_id[r].label] for r in p.val_windows.rec_ids])
    return float(np.mean(rs.argmax(1) == want))


class _Prefetch:
    """Draws training batches on a background thread (one stop event ends it)."""

    def __init__(self, sampler: WindowSampler, batch_size: int, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, args=(sampler, batch_size), daemon=True, name="prefetch")
        self.t.start()

    def _run(self, sampler, bs):
        while not self.stop.is_set():
            b = sampler.batch(bs)
            while not self.stop.is_set():
                try:
                    self.q.put(b, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def get(self):
        return self.q.get()

    def close(self):
        self.stop.set()
        self.t.join(timeout=5)


def _loss(cfg: TrainConfig):
    import keras

    if cfg.train.loss == "focal":
        return keras.losses.BinaryFocalCrossentropy(label_smoothing=cfg.train.label_smoothing)
    return keras.losses.BinaryCrossentropy(label_smoothing=cfg.train.label_smoothing)


def fit(p: Prepared, cfg: TrainConfig, progress: bool = True) -> tuple[Any, list[dict]]:
    import keras

    from .model import build_model, calibrate_batchnorm, set_trainable

    t = cfg.train
    d = cfg.distill
    use_pool = d.teacher == "birdnet" and d.target == "pool"
    temperature = d.temperature if use_pool else 1.0  # distill.temperature applies to the pool's targets
    from .kd import to_teacher_scale
    if use_pool:  # a bad model option (weights path, alpha) fails now, not after the teacher's work
        build_model(cfg.model, p.logmel.params.input_shape, len(p.ds.classes), seed=t.seed)
    if use_pool and p.kd is None:
        from .kd import build as build_kd

        cache = FrameCache(p.logmel.params, cfg.data.cache_dir or default_cache_dir())
        p.kd = build_kd(p.ds, p.train.recordings, cache, cfg, Path(p.ds.root), progress)
    if d.teacher == "birdnet" and not use_pool and p.teacher is None:
        from .distill import build_targets

        t0 = time.time()
        cache = Path(cfg.data.cache_dir or default_cache_dir()).parent / "teacher"
        p.teacher = build_targets(p.train, p.frames, p.logmel.params, d.hop_s, cfg.data.energy_percentile, cache,
                                  d.num_threads, progress)
        if d.target == "scores":
            from .distill import add_soft_labels

            rows = sorted((k, rid) for rid, ks in p.teacher.index.items() for k in ks)
            add_soft_labels(p.teacher, p.train, [rid for _, rid in rows], d.label_weight, seed=t.seed)
        log.info("teacher targets in %.0f s", time.time() - t0)
    teacher = p.teacher if d.teacher != "none" and not use_pool else None
    embed_teacher = teacher is not None and d.target == "embedding"
    kd_aux = use_pool and p.kd.pool_aux is not None
    parts = build_model(cfg.model, p.logmel.params.input_shape, len(p.ds.classes), seed=t.seed,
                        distill_dim=teacher.emb.shape[1] if embed_teacher else 0,
                        aux_dim=p.kd.pool_aux.shape[1] if kd_aux else 0,
                        aux_activation="sigmoid" if d.aux == "logits" else "linear")
    if use_pool:
        from .kd import KDSampler

        sampler = KDSampler(p.kd, p.logmel, cfg.augment, t.seed, d.pool_fraction, d.negative_fraction,
                            pool_balanced=d.pool_balanced, temperature=temperature)
    else:
        sampler = WindowSampler(p.train, p.frames, p.logmel, cfg.augment, cfg.data.energy_percentile,
                                t.balanced_sampling, t.seed, teacher=teacher, jitter_frames=d.jitter_frames)
    two = embed_teacher or kd_aux
    if kd_aux:
        losses_ = [_loss(cfg), keras.losses.BinaryCrossentropy() if d.aux == "logits" else "mse"]
        weights_ = [1.0, d.aux_weight]
    else:
        losses_ = [_loss(cfg), "mse"] if embed_teacher else _loss(cfg)
        weights_ = [1.0, d.weight] if embed_teacher else None

    def targets(y, tt):
        return [y, tt] if two else y

    def first(out):
        return out[0] if isinstance(out, (list, tuple)) else out

    history: list[dict] = []
    if cfg.model.weights == "none":
        calibrate_batchnorm(parts, (sampler.batch(t.batch_size, augment=False)[0] for _ in range(30)))
        set_trainable(parts, cfg.model.mode, cfg.model.finetune_blocks)

    if t.head_epochs:
        t0 = time.time()
        n = t.head_windows_per_recording * len(p.train.recordings)
        xs, ys, ts = zip(*(sampler.sample(augment=True) for _ in range(n)))
        emb = parts.embedder.predict(np.stack(xs), batch_size=64, verbose=0)
        emb_val = parts.embedder.predict(p.x_val, batch_size=64, verbose=0)
        parts.head.compile(optimizer=keras.optimizers.Adam(t.head_learning_rate), loss=losses_, loss_weights=weights_)
        parts.head.fit(emb, targets(np.stack(ys), np.stack(ts) if two else None), batch_size=64,
                       epochs=t.head_epochs, verbose=0, shuffle=True)
        s = first(parts.head.predict(emb_val, batch_size=256, verbose=0))
        row = {"stage": "head", "epoch": 0, "val_macro_roc_auc": _quick_auc(p.val_windows.y, s),
               "val_recording_top1": _quick_top1(p, s), "seconds": round(time.time() - t0, 1)}
        history.append(row)
        log.info("head on %d cached windows: val macro ROC-AUC %.3f, top-1 %.3f (%.0f s)", n,
                 row["val_macro_roc_auc"], row["val_recording_top1"], row["seconds"])

    if cfg.model.mode == "frozen" or t.epochs == 0:
        to_teacher_scale(parts, temperature)
        return parts, history

    set_trainable(parts, cfg.model.mode, cfg.model.finetune_blocks)
    total = t.epochs * t.steps_per_epoch
    sched = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=t.learning_rate * 0.1 if t.warmup_steps else t.learning_rate,
        decay_steps=max(1, total - t.warmup_steps), alpha=0.01,
        warmup_target=t.learning_rate if t.warmup_steps else None, warmup_steps=t.warmup_steps)
    opt = keras.optimizers.AdamW(sched, weight_decay=t.weight_decay, use_ema=t.ema_momentum > 0,
                                 ema_momentum=t.ema_momentum)
    parts.train_model.compile(optimizer=opt, loss=losses_, loss_weights=weights_)
    best, best_auc, bad = None, -1.0, 0
    pre = _Prefetch(sampler, t.batch_size)
    try:
        for epoch in range(1, t.epochs + 1):
            t0 = time.time()
            losses = []
            steps = range(t.steps_per_epoch)
            if progress:
                from tqdm import tqdm

                steps = tqdm(steps, desc=f"epoch {epoch}/{t.epochs}", unit="step", leave=False)
            for _ in steps:
                x, y, tt = pre.get()
                losses.append(float(first(parts.train_model.train_on_batch(x, targets(y, tt)))))
                if progress:
                    steps.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            row = {"stage": "finetune", "epoch": epoch, "loss": float(np.mean(losses))}
            if t.early_stopping_patience or t.validate_every_epoch or epoch == t.epochs:
                s = parts.model.predict(p.x_val, batch_size=64, verbose=0)
                row["val_macro_roc_auc"] = _quick_auc(p.val_windows.y, s)
                row["val_recording_top1"] = _quick_top1(p, s)
            row["seconds"] = round(time.time() - t0, 1)
            history.append(row)
            log.info("epoch %d/%d loss %.4f val macro ROC-AUC %s top-1 %s (%.0f s)", epoch, t.epochs, row["loss"],
                     f"{row.get('val_macro_roc_auc', float('nan')):.3f}", f"{row.get('val_recording_top1', float('nan')):.3f}",
                     row["seconds"])
            if t.early_stopping_patience:
                auc = row["val_macro_roc_auc"]
                if auc > best_auc:
                    best_auc, best, bad = auc, parts.model.get_weights(), 0
                else:
                    bad += 1
                    if bad >= t.early_stopping_patience:
                        log.info("early stop: no better validation ROC-AUC for %d epochs", bad)
                        break
    finally:
        pre.close()
    if t.ema_momentum and best is None:
        opt.finalize_variable_values(parts.train_model.trainable_variables)
        log.info("ended on the moving average of the weights (momentum %g)", t.ema_momentum)
    if best is not None:
        parts.model.set_weights(best)
        log.info("restored the best epoch (val macro ROC-AUC %.3f)", best_auc)
    to_teacher_scale(parts, temperature)
    return parts, history


def evaluate_both(res: Result, cfg: TrainConfig) -> None:
    """Quantize, then score float and int8 with the same metric code."""
    from .evaluate import compute_metrics, score_int8, score_keras
    from .quantize import quantize_int8

    p = res.prepared
    idx = p.ds.index()
    by_id = {r.id: r for r in p.val.recordings}
    primary = [idx[by_id[r].label] for r in p.val_windows.rec_ids]
    t0 = time.time()
    res.float_scores = score_keras(res.parts.model, p.x_val)
    res.float_metrics = compute_metrics(p.val_windows.y, res.float_scores, p.val_windows.rec_index,
                                        p.val_windows.rec_ids, primary, p.ds.classes)
    if p.kd is not None:  # calibration windows like the training ones: grid, pool, negatives, synthetic
        from .kd import KDSampler

        sampler = KDSampler(p.kd, p.logmel, cfg.augment, cfg.train.seed + 1, cfg.distill.pool_fraction,
                            cfg.distill.negative_fraction)
    else:
        sampler = WindowSampler(p.train, p.frames, p.logmel, cfg.augment, cfg.data.energy_percentile, True,
                                cfg.train.seed + 1)
    rep = np.stack([sampler.sample(augment=False)[0] for _ in range(cfg.quantize.representative_windows)])
    t1 = time.time()
    res.model_bytes = quantize_int8(res.parts.model, rep, cfg.quantize.output_kind)
    res.timings["quantize_s"] = round(time.time() - t1, 1)
    res.int8_scores = score_int8(res.model_bytes, p.x_val, output_kind=cfg.quantize.output_kind)
    res.int8_metrics = compute_metrics(p.val_windows.y, res.int8_scores, p.val_windows.rec_index,
                                       p.val_windows.rec_ids, primary, p.ds.classes)
    if p.kd is not None and cfg.thresholds.method == "precision":
        _open_set(res, cfg)
    res.timings["evaluate_s"] = round(time.time() - t0, 1)


def _open_set(res: Result, cfg: TrainConfig) -> None:
    """Held-out negatives and silence: precision-floored thresholds and false events per hour."""
    from .evaluate import score_int8, score_keras
    from .holdout import negative_windows, silence_windows

    p = res.prepared
    cache = FrameCache(p.logmel.params, cfg.data.cache_dir or default_cache_dir())
    neg = negative_windows(p.kd.negatives.held_out, cache, p.logmel, p.ds.classes, cfg.bundle.hop_s)
    sil = silence_windows(p.logmel)
    kind = cfg.quantize.output_kind
    sc = {"int8": score_int8(res.model_bytes, neg.x, output_kind=kind) if len(neg.x) else np.zeros((0, len(p.ds.classes))),
          "float": score_keras(res.parts.model, neg.x) if len(neg.x) else np.zeros((0, len(p.ds.classes))),
          "silence_int8": score_int8(res.model_bytes, sil, output_kind=kind),
          "silence_float": score_keras(res.parts.model, sil)}
    res.open_set = {k: tune_operating_point(cfg, p, neg, s_val, sc[k], sc[f"silence_{k}"])
                    for k, s_val in (("int8", res.int8_scores), ("float", res.float_scores))}
    res.neg_windows, res.neg_scores = neg, sc
    res.int8_metrics["thresholds"] = res.open_set["int8"]["thresholds"]
    o = res.open_set["int8"]
    th = cfg.thresholds
    log.info("operating point (precision >= %.2f, threshold >= %.2f): %.1f false events/h on %.2f h of held-out "
             "negatives, %d silence windows detected; below target: %s", th.target_precision, th.min_threshold,
             o["false_events_per_hour_negatives"], o["negative_hours"], o["silence_windows_detected"],
             o["species_below_target"])


def tune_operating_point(cfg: TrainConfig, p: Prepared, neg, s_val: np.ndarray, s_neg: np.ndarray,
                         s_sil: np.ndarray) -> dict:
    """The operating point (trainer/holdout.py) for one model's scores of the hold-out, negatives and silence."""
    from .holdout import operating_point

    th = cfg.thresholds
    return operating_point(p.val_windows.y, s_val, neg, s_neg, s_sil, p.ds.classes, th.target_precision,
                           th.min_threshold, th.max_threshold, th.min_windows, p.val_windows.rec_index)


def run(data: str | Path | Dataset, out_dir: str | Path, cfg: TrainConfig, *, private_key=None,
        split: tuple[list[str], list[str]] | None = None, progress: bool = True, write_plots: bool = True) -> Result:
    from .bundle import write_bundle
    from .evaluate import summary
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    p = prepare(data, cfg, split=split, progress=progress)
    t1 = time.time()
    parts, history = fit(p, cfg, progress=progress)
    t2 = time.time()
    res = Result(p, parts, history)
    evaluate_both(res, cfg)
    segment = None
    if cfg.bundle.inference == "segment":
        from .segment import apply_segment

        segment = apply_segment(res, cfg)
    res.timings.update(prepare_s=round(t1 - t0, 1), train_s=round(t2 - t1, 1))
    m_f, m_q = res.float_metrics, res.int8_metrics
    drop = {"macro_roc_auc": m_f["macro_roc_auc"] - m_q["macro_roc_auc"],
            "recording_top1_accuracy": m_f["recording_top1_accuracy"] - m_q["recording_top1_accuracy"]}
    log.info("float: %s", json.dumps(summary(m_f)))
    log.info("int8:  %s  (drop %s)", json.dumps(summary(m_q)), json.dumps(drop))
    if private_key is None:
        private_key = _key_for(out, cfg)
    training = {"dataset": p.ds.summary(), "n_train_recordings": len(p.train.recordings),
                "n_val_recordings": len(p.val.recordings), "split": "recordist-grouped per species, stratified",
                "config": json.loads(cfg.model_dump_json()), "history": history,
                "teacher": None if cfg.distill.teacher == "none" else f"{_teacher_name()}, target: {cfg.distill.target}"}
    metrics = {**summary(m_q), "evaluated_on": "hold-out (recordist-grouped), int8 model",
               "float": summary(m_f), "int8_drop": drop}
    if res.open_set:
        o = res.open_set["int8"]
        metrics["operating_point"] = {k: o[k] for k in (
            "target_precision", "min_threshold", "min_windows", "false_events_per_hour_negatives", "negative_hours",
            "silence_windows_detected", "species_below_target")}
    if res.inference:
        metrics["inference"] = res.inference
    if p.kd is not None:
        training["distillation"] = p.kd.info
    if cfg.distill.teacher != "none":
        training["licence_note"] = (
            "distilled from BirdNET V2.4 (CC BY-NC-SA 4.0, Cornell Lab of Ornithology and Chemnitz University of "
            "Technology): arguably a derivative work, so use it non-commercially and share it (and models made "
            "from it) under the same terms, crediting BirdNET and the recordists (docs/training.md)")
    bundle_path = out / f"{cfg.bundle.name}.bundle"
    res.bundle_path = write_bundle(
        bundle_path, model_bytes=res.model_bytes, classes=p.ds.classes, names=p.ds.names,
        frontend=p.logmel.params, hop_s=cfg.bundle.hop_s, thresholds=m_q["thresholds"],
        selftest_features=p.x_val[0] if res.selftest_features is None else res.selftest_features,
        private_key=private_key, name=cfg.bundle.name,
        version=cfg.bundle.version, training=training, metrics=metrics, output_kind=cfg.quantize.output_kind,
        min_windows=res.open_set["int8"]["min_windows"] if res.open_set else 1, segment=segment)
    try:  # the float model, for later analysis or re-quantization
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Keras's numpy-2 __array__ notice, per weight
            parts.model.save(out / "model.keras")
    except Exception as exc:  # noqa: BLE001 - a report extra, never fatal
        log.warning("could not save the Keras model: %s", exc)
    np.save(out / "validation_scores_float.npy", res.float_scores)
    np.save(out / "validation_scores_int8.npy", res.int8_scores)
    res.timings["total_s"] = round(time.time() - t0, 1)
    write_report(out, m_q, m_f, history, p, res.float_scores, res.int8_scores, timings=res.timings, plots=write_plots)
    return res


def _teacher_name() -> str:
    from .distill import TEACHER_NAME

    return TEACHER_NAME


def _key_for(out: Path, cfg: TrainConfig):
    from edge.contract.signing import generate_keypair, load_private_key

    if cfg.bundle.signing_key:
        return load_private_key(cfg.bundle.signing_key)
    key_dir = out / "key"
    if not (key_dir / "signing.key").exists():
        generate_keypair(key_dir)
        log.warning("no bundle.signing_key given: signed with a new key pair in %s (public key: %s)",
                    key_dir, key_dir / "signing.pub")
    return load_private_key(key_dir / "signing.key")
