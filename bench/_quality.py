"""The quality bench's anchors and tables (bench/train_puerto_rico): BirdNET on the same hold-out windows.

BirdNET V2.4 hears exactly the student's hold-out windows (the same samples,
resampled to 48 kHz; trainer/teacher.py caches its outputs by content):

- zero-shot: its own sigmoid score of each of the model's species (matched by
  scientific name); species it does not know score 0;
- embeddings + logistic regression (BirdNET-Analyzer's custom classifier): one
  LR per species on its 1024-d embeddings of the 1 s training grid (recording
  labels), scored on the hold-out windows.

Each model's operating point is tuned the same way (trainer/holdout.py).
BirdNET's usual operating point confirms every window (``min_windows`` 1);
for transparency zero-shot is also tuned and counted under the event rule the
student ships (``thresholds.min_windows``): ``operating_point_rule``.
"""
from __future__ import annotations

import time

import numpy as np


def time_invoke(fn, x, n: int = 50) -> float:
    for _ in range(5):
        fn(x)
    t = time.perf_counter()
    for _ in range(n):
        fn(x)
    return (time.perf_counter() - t) / n * 1000.0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float32), -30, 30)))


def birdnet_anchors(res, cfg, threads: int = 1, progress: bool = False) -> dict:
    """Zero-shot and embeddings+LR figures on the student's hold-out (labelled windows, negatives, silence)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trainer import pool as poolmod
    from trainer import teacher as T
    from trainer.birdnet import BirdNET
    from trainer.evaluate import compute_metrics
    from trainer.holdout import operating_point
    from trainer.teacher import default_teacher_cache

    p, kd = res.prepared, res.prepared.kd
    fe = p.logmel.params
    cache = cfg.distill.cache_dir or default_teacher_cache()
    to_pool = poolmod.POOL_RATE / fe.sample_rate
    by_id = {r.id: r for r in p.val.recordings}
    vw, neg = p.val_windows, res.neg_windows
    keys = {}
    for r in list(p.val.recordings) + list(kd.negatives.held_out):
        keys[r.id] = T.file_key(r.path)
    paths = {keys[r.id]: str(r.path) for r in list(p.val.recordings) + list(kd.negatives.held_out)}
    items = [(keys[vw.rec_ids[vw.rec_index[i]]], int(round(int(vw.starts[i]) * fe.hop_length * to_pool)))
             for i in range(len(vw))]
    neg_ids = {r.id: r for r in kd.negatives.held_out}
    items_neg = [(keys[neg_ids[neg.rec_ids[neg.rec_index[i]]].id], int(round(int(neg.offsets[i]) * to_pool)))
                 for i in range(len(neg.offsets))]
    t0 = time.time()
    tv = T.window_table(items, paths, cache, cfg.distill.workers, progress)
    tn = T.window_table(items_neg, paths, cache, cfg.distill.workers, progress)
    bn = BirdNET(num_threads=threads)
    sil_audio = [np.zeros(bn.window_samples, np.float32), np.full(bn.window_samples, 0.1, np.float32),
                 (np.random.default_rng(0).standard_normal(bn.window_samples) * 3e-5).astype(np.float32)]
    sil = [bn.invoke(a) for a in sil_audio]
    sil_logit = np.stack([np.log(s / (1 - s + 1e-12) + 1e-12) for s, _ in sil])
    sil_emb = np.stack([e for _, e in sil])
    teacher_s = round(time.time() - t0, 1)
    idx = p.ds.index()
    primary = [idx[by_id[r].label] for r in vw.rec_ids]
    bi = kd.birdnet_index
    known = bi >= 0

    def zero_shot(logits):
        s = np.zeros((len(logits), len(bi)), np.float32)
        s[:, known] = _sigmoid(np.asarray(logits, np.float32)[:, bi[known]])
        return s

    out = {}
    th = cfg.thresholds
    x_noise = (np.random.default_rng(0).standard_normal(bn.window_samples) * 0.01).astype(np.float32)
    ms = time_invoke(bn.invoke, x_noise, n=20)
    mb = bn.path.stat().st_size / 1e6
    # zero-shot
    s_val, s_neg, s_sil = zero_shot(tv.logits), zero_shot(tn.logits), zero_shot(sil_logit)
    m = compute_metrics(vw.y, s_val, vw.rec_index, vw.rec_ids, primary, p.ds.classes)
    m["operating_point"] = operating_point(vw.y, s_val, neg, s_neg, s_sil, p.ds.classes, th.target_precision,
                                           th.min_threshold, th.max_threshold)
    if th.min_windows > 1:
        m["operating_point_rule"] = operating_point(vw.y, s_val, neg, s_neg, s_sil, p.ds.classes,
                                                    th.target_precision, th.min_threshold, th.max_threshold,
                                                    th.min_windows, vw.rec_index)
    m.update(invoke_ms=ms, model_mb=mb, scores=s_val)
    out["birdnet_zero_shot"] = m
    # embeddings + LR
    pos = kd.grid_pos
    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(
        LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")))
    clf.fit(np.asarray(kd.grid_emb[pos], np.float32), (kd.grid_ylabel[pos] > 0).astype(int))
    s_val = clf.predict_proba(np.asarray(tv.emb, np.float32))
    s_neg = clf.predict_proba(np.asarray(tn.emb, np.float32)) if len(tn.emb) else np.zeros((0, len(bi)))
    s_sil = clf.predict_proba(sil_emb.astype(np.float32))
    m = compute_metrics(vw.y, s_val, vw.rec_index, vw.rec_ids, primary, p.ds.classes)
    m["operating_point"] = operating_point(vw.y, s_val, neg, s_neg, s_sil, p.ds.classes, th.target_precision,
                                           th.min_threshold, th.max_threshold)
    m.update(invoke_ms=ms, model_mb=mb, scores=s_val, n_train_windows=int(pos.sum()))
    out["birdnet_embeddings_lr"] = m
    out["teacher_s"] = teacher_s
    return out


def float_tflite_ms(model, x: np.ndarray, threads: int = 1) -> tuple[float, float]:
    """(ms per window, MB) of the float model converted to TFLite without quantization."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from trainer.quantize import logit_model

    blob = tf.lite.TFLiteConverter.from_keras_model(logit_model(model)).convert()
    it = Interpreter(model_content=blob, num_threads=threads)
    it.allocate_tensors()
    i = it.get_input_details()[0]["index"]

    def run(v):
        it.set_tensor(i, v)
        it.invoke()

    return time_invoke(run, x[None].astype(np.float32), n=50), len(blob) / 1e6


def bundle_on_holdout(bundle_path, public_key, val_ds, negatives, classes, hop_s: float = 1.5, threads: int = 1,
                      cfg=None) -> dict:
    """A shipped bundle's figures on the same hold-out: labelled windows, held-out negatives and silence,
    at the bundle's own thresholds (what a recorder running it would store) and at a re-tuned operating point."""
    from edge.contract.bundle import load_bundle
    from edge.contract.frontend import LogMel
    from edge.contract.interpreter import load_model
    from edge.contract.signing import load_public_key
    from trainer.data import FrameCache, eval_windows, features_batch
    from trainer.evaluate import compute_metrics
    from trainer.evaluate_bundle import bundle_scores
    from trainer.segment import open_set_scores
    from trainer.holdout import negative_windows, operating_point, silence_windows
    from trainer.openset import events_per_hour
    from trainer.train import default_cache_dir

    b = load_bundle(bundle_path, load_public_key(public_key))
    if [lab.label for lab in b.labels] != list(classes):
        raise ValueError(f"{bundle_path}: labels differ from the dataset's classes")
    fe = b.frontend
    lm = LogMel(fe)
    fc = FrameCache(fe, default_cache_dir())
    frames = {r.id: fc.frames(r.path) for r in val_ds.recordings}
    seg = b.segment
    if seg is not None:
        hop_s = b.hop_s  # a segment model scores windows at its own hop
    vw = eval_windows(val_ds, frames, fe, hop_s)
    x = features_batch(lm, frames, vw)
    model = load_model(b, num_threads=threads)
    s_val = model.predict_batch(x) if seg is None else bundle_scores(b, model, frames, vw)
    idx = {c: i for i, c in enumerate(classes)}
    by_id = {r.id: r for r in val_ds.recordings}
    primary = [idx[by_id[r].label] for r in vw.rec_ids]
    m = compute_metrics(vw.y, s_val, vw.rec_index, vw.rec_ids, primary, list(classes),
                        thresholds=dict(b.thresholds))
    neg = negative_windows(negatives, fc, lm, list(classes), hop_s)
    if seg is None:
        s_neg = model.predict_batch(neg.x) if len(neg.x) else np.zeros((0, len(classes)))
        s_sil = model.predict_batch(silence_windows(lm))
    else:  # each negative recording's windows in order, W per invoke; silence windows one per invoke
        s_neg, s_sil = open_set_scores(seg, model.predict, lm, fc, negatives, neg, len(classes))
    t = np.array([b.thresholds.get(c, 0.5) for c in classes])
    fe_h, ev = events_per_hour(s_neg, neg.rec_index, t, neg.hours, neg.labels, b.min_windows)
    m["operating_point"] = {"false_events_per_hour_negatives": fe_h, "negative_hours": neg.hours,
                            "silence_windows_detected": int((s_sil >= t[None]).any(axis=1).sum()),
                            "false_events_by_class": {c: int(e) for c, e in zip(classes, ev)},
                            "thresholds": dict(b.thresholds), "min_windows": b.min_windows,
                            "note": "the bundle's own operating point"}
    if cfg is not None:
        th = cfg.thresholds
        m["retuned_operating_point"] = operating_point(vw.y, s_val, neg, s_neg, s_sil, list(classes),
                                                       th.target_precision, th.min_threshold, th.max_threshold,
                                                       th.min_windows, vw.rec_index)
    q = model.quantize((x[0] if seg is None else seg.assemble(x[: seg.windows]))[None])
    per_invoke = time_invoke(model.invoke_int8, q, n=200 if seg is None else 20)
    m["invoke_ms"] = per_invoke / (1 if seg is None else seg.windows)  # per window
    m["inference"] = {"kind": "window"} if seg is None else {"kind": "segment", "windows": seg.windows,
                                                             "invoke_ms_per_segment": per_invoke}
    m["model_mb"] = len(b.model_bytes) / 1e6
    m["version"] = b.version
    m["input_shape"] = list(fe.input_shape)
    return m
