"""Segment inference from a trained per-window model (edge/contract/segment.py): one backbone pass over
``spec.windows`` consecutive windows, converted to full int8.

``segment_model`` rebuilds the trained network for the segment's input: the
same backbone weights at the longer input width, the mean over the frequency
axis, the contract's overlap pooling (``spec.pooling()``) as a constant
(windows, columns) matrix, then the head's Dense layers row by row (no
dropout). With ``windows == 1`` it is the per-window model. Only
``model.pooling: avg`` has columns to pool this way.

``representative_segments`` draws calibration inputs as the edge assembles
them: runs of consecutive windows of the training recordings (and negatives).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from edge.contract.segment import SegmentSpec

from .quantize import apply_head, convert_int8

log = logging.getLogger(__name__)


class SegmentConversionError(ValueError):
    """A trained model that cannot run as a segment model; the message names the option."""


def _backbone(model):
    """The embedder's backbone (the nested Keras model), refusing a pooling other than the global average."""
    import keras

    embedder = model.get_layer("embedder")
    pool = embedder.get_layer("pool")
    if not isinstance(pool, keras.layers.GlobalAveragePooling2D):
        raise SegmentConversionError("segment inference needs model.pooling: avg (this model was trained with "
                                     "avgmax, whose max over time cannot be shared between windows)")
    nested = [layer for layer in embedder.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise SegmentConversionError(f"expected one backbone model inside 'embedder', found {len(nested)}")
    return nested[0]


def _backbone_at(backbone, input_shape: tuple[int, int, int]):
    """The same backbone built for another input size, with the same weights (its padding is fixed in its
    config, and segment inputs keep the window's parity at every stride: they are longer by multiples of 32)."""
    import keras

    cfg = backbone.get_config()
    for layer in cfg["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [None, *input_shape]
    net = keras.Model.from_config(cfg)
    net.set_weights(backbone.get_weights())
    return net


def segment_model(model, spec: SegmentSpec, output_kind: str = "probability"):
    """Keras model: (n_mels, input_frames, 1) segment input -> (windows, classes) scores (logits for 'logit')."""
    import keras
    from keras import layers, ops

    if tuple(model.input_shape[1:]) != (spec.n_mels, spec.window_frames, 1):
        raise SegmentConversionError(f"model input {tuple(model.input_shape[1:])} does not match the segment's "
                                     f"windows ({spec.n_mels}, {spec.window_frames}, 1)")
    backbone = _backbone(model)
    net = _backbone_at(backbone, (spec.n_mels, spec.input_frames, backbone.input_shape[-1]))
    inp = keras.Input(shape=spec.input_shape, name="logmel")
    x = layers.Concatenate(axis=-1, name="tile3")([inp] * backbone.input_shape[-1])
    x = net(x)  # (freq, columns, ch)
    if x.shape[2] != spec.columns:
        raise SegmentConversionError(f"the backbone gives {x.shape[2]} columns for {spec.input_frames} frames, "
                                     f"the segment contract expects {spec.columns}")
    x = ops.mean(x, axis=1)  # (columns, ch)
    x = ops.transpose(x, (0, 2, 1))  # (ch, columns): the pooling is a bias-free Dense over the columns
    pool = layers.Dense(spec.windows, use_bias=False, name="window_pool")
    x = pool(x)
    pool.set_weights([spec.pooling().T.astype(np.float32)])
    x = ops.transpose(x, (0, 2, 1))  # (windows, ch)
    x = apply_head(x, model.get_layer("head"), output_kind)
    return keras.Model(inp, x, name=f"{model.name}_segment{spec.windows}")


def segment_int8(model, spec: SegmentSpec, representative: Sequence[np.ndarray] | np.ndarray,
                 output_kind: str = "probability") -> bytes:
    """The trained per-window model as a full-int8 segment model (input (1, n_mels, input_frames, 1), output
    (1, windows, classes)); ``representative`` are assembled segment inputs (``representative_segments``)."""
    return convert_int8(segment_model(model, spec, output_kind), representative, "segments")


def representative_segments(spec: SegmentSpec, logmel, frames: Sequence[np.ndarray], n: int,
                            seed: int = 0) -> np.ndarray:
    """``n`` assembled segment inputs for calibration: each from a random recording's frames (dB frames,
    (n_frames, n_mels)), a run of up to ``spec.windows`` consecutive windows at the hop from a random start
    (a recording shorter than a window is repeated to fill it, as the evaluation does); one in four has fewer
    windows, as at the end of a file."""
    from .data import pad_frames

    if not len(frames):
        raise ValueError("representative segments need at least one recording's frames")
    rng = np.random.default_rng(seed)
    nf, hop = spec.window_frames, spec.hop_frames
    out = np.zeros((n, *spec.input_shape), np.float32)
    for i in range(n):
        f = pad_frames(frames[int(rng.integers(len(frames)))], nf)
        fit = 1 + (len(f) - nf) // hop  # windows that fit from the first frame
        m = min(spec.windows, fit)
        if m > 1 and rng.random() < 0.25:
            m = int(rng.integers(1, m))
        s0 = hop * int(rng.integers(fit - m + 1))
        feats = np.stack([logmel.features(f[s0 + k * hop: s0 + k * hop + nf].astype(np.float32)) for k in range(m)])
        spec.assemble(feats, out=out[i])
    return out


def spec_for(cfg) -> SegmentSpec:
    """The segment spec a training config asks for (bundle.inference segment)."""
    from edge.contract.segment import hop_frames_of

    fe = cfg.frontend.params()
    return SegmentSpec(windows=cfg.bundle.segment_windows, hop_frames=hop_frames_of(cfg.bundle.hop_s, fe),
                       window_frames=fe.n_frames, n_mels=fe.n_mels)


def edge_starts(n_total: int, n_frames: int, hop_frames: int) -> np.ndarray:
    """Start frames of the windows the edge makes over a stretch of ``n_total`` frames, in order: every hop from
    0, then one window aligned to the end if frames remain after the last (edge/detection/pipeline.py); a
    stretch shorter than a window gives one window at 0."""
    if n_total <= n_frames:
        return np.array([0])
    starts = list(range(0, n_total - n_frames + 1, hop_frames))
    if n_total > starts[-1] + n_frames:
        starts.append(n_total - n_frames)
    return np.array(starts)


def recording_scores(spec: SegmentSpec, predict, logmel, frames: np.ndarray,
                     starts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Scores of the windows at ``starts`` of one recording, computed as the edge computes them: all the
    recording's windows in order (``edge_starts``, the tail window in the last chunk's next slot), ``spec.windows``
    per invoke from the first (``edge.contract.segment.score_windows``)."""
    from edge.contract.segment import score_windows

    from .data import pad_frames

    nf = spec.window_frames
    f = pad_frames(frames, nf)
    every = edge_starts(len(f), nf, spec.hop_frames)
    feats = np.stack([logmel.features(f[s:s + nf].astype(np.float32)) for s in every])
    scores = score_windows(spec, predict, feats)
    row = {int(s): i for i, s in enumerate(every)}
    missing = sorted(int(s) for s in starts if int(s) not in row)
    if missing:
        raise ValueError(f"windows starting at frames {missing[:5]} are not windows the edge makes at a hop of "
                         f"{spec.hop_frames} frames")
    return scores[[row[int(s)] for s in starts]]


def grouped_scores(spec: SegmentSpec, predict, logmel, frames_of, rec_ids: Sequence[str], rec_index: np.ndarray,
                   starts: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, classes) scores of windows given by recording (``rec_ids[rec_index]``) and start frame, each recording
    scored as the edge scores it (``recording_scores``); ``frames_of(rec_id)`` gives its dB frames."""
    out = np.zeros((len(starts), n_classes), np.float32)
    for k, rid in enumerate(rec_ids):
        sel = np.flatnonzero(rec_index == k)
        if len(sel):
            out[sel] = recording_scores(spec, predict, logmel, frames_of(rid), starts[sel])
    return out


def single_window_scores(spec: SegmentSpec, predict, x: np.ndarray) -> np.ndarray:
    """Scores of unrelated windows (silence), each as a segment of one window."""
    return np.stack([np.asarray(predict(spec.assemble(w[None])))[0] for w in x])


def open_set_scores(spec: SegmentSpec, predict, logmel, cache, negatives, neg, n_classes: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the held-out negatives ``neg`` (trainer.holdout.NegWindows of the recordings ``negatives``,
    their frames from ``cache``), each recording scored as the edge scores it, and of the silence windows,
    each as a segment of one window."""
    from .holdout import silence_windows

    recs = {r.id: r for r in negatives}
    s_neg = grouped_scores(spec, predict, logmel, lambda rid: cache.frames(recs[rid].path), neg.rec_ids,
                           neg.rec_index, np.asarray(neg.offsets) // logmel.params.hop_length, n_classes)
    return s_neg, single_window_scores(spec, predict, silence_windows(logmel))


OP_KEYS = ("target_precision", "min_threshold", "min_windows", "false_events_per_hour_negatives", "negative_hours",
           "silence_windows_detected", "species_below_target")


def apply_segment(res, cfg, num_threads: int = 2) -> SegmentSpec:
    """After ``trainer.train.evaluate_both``: convert ``res.parts.model`` to the int8 segment model and put it in
    place of the per-window int8 model: ``res.model_bytes``, ``res.int8_scores`` and ``res.int8_metrics`` (the
    hold-out scored as the edge scores it) and the int8 operating point (thresholds re-tuned on segment scores
    of the hold-out, the held-out negatives and silence). The float figures stay the per-window float model's;
    the per-window int8 figures go to ``res.inference['window_int8']``. ``res.parts`` may be any object with
    the trained Keras ``model``."""
    import time

    from edge.contract.interpreter import Int8Model

    from .data import pad_frames
    from .evaluate import compute_metrics, summary

    p = res.prepared
    spec = spec_for(cfg)
    kind = cfg.quantize.output_kind
    window: dict = {"metrics": summary(res.int8_metrics), "model_mb": round(len(res.model_bytes or b"") / 1e6, 3)}
    if res.open_set:
        window["operating_point"] = {k: res.open_set["int8"][k] for k in OP_KEYS}
    n = max(8, -(-2 * cfg.quantize.representative_windows // spec.windows))
    rep = representative_segments(spec, p.logmel, [p.frames[r.id] for r in p.train.recordings], n, cfg.train.seed + 1)
    negs = [p.kd.frames[r.id] for r in p.kd.negatives.train if r.id in p.kd.frames] if p.kd is not None else []
    if negs:  # a quarter of the calibration from the training negatives, as the per-window calibration has some
        rep[: n // 4] = representative_segments(spec, p.logmel, negs, n // 4, cfg.train.seed + 2)
    t0 = time.time()
    res.model_bytes = segment_int8(res.parts.model, spec, rep, kind)
    res.timings["quantize_segment_s"] = round(time.time() - t0, 1)
    model = Int8Model(res.model_bytes, num_threads=num_threads, output_kind=kind)
    vw, classes = p.val_windows, p.ds.classes
    res.int8_scores = grouped_scores(spec, model.predict, p.logmel, p.frames.__getitem__, vw.rec_ids, vw.rec_index,
                                     vw.starts, len(classes))
    idx = p.ds.index()
    by_id = {r.id: r for r in p.val.recordings}
    res.int8_metrics = compute_metrics(vw.y, res.int8_scores, vw.rec_index, vw.rec_ids,
                                       [idx[by_id[r].label] for r in vw.rec_ids], classes)
    if res.open_set:
        _retune(res, cfg, spec, model)
    nf = spec.window_frames
    f = pad_frames(p.frames[vw.rec_ids[0]], nf)
    starts = edge_starts(len(f), nf, spec.hop_frames)[: spec.windows]
    res.selftest_features = spec.assemble(np.stack([p.logmel.features(f[s:s + nf].astype(np.float32))
                                                    for s in starts]))
    res.inference = {"kind": "segment", "windows": spec.windows, "hop_frames": spec.hop_frames,
                     "window_int8": window}
    log.info("segment model (%d windows per invoke): int8 macro ROC-AUC %.3f, top-1 %.3f (per-window int8 %.3f, "
             "%.3f)", spec.windows, res.int8_metrics["macro_roc_auc"], res.int8_metrics["recording_top1_accuracy"],
             window["metrics"]["macro_roc_auc"], window["metrics"]["recording_top1_accuracy"])
    return spec


def _retune(res, cfg, spec: SegmentSpec, model) -> None:
    """The int8 operating point on segment scores of the hold-out, the held-out negatives and silence."""
    from .data import FrameCache
    from .train import default_cache_dir, tune_operating_point

    p, neg = res.prepared, res.neg_windows
    cache = FrameCache(p.logmel.params, cfg.data.cache_dir or default_cache_dir())
    s_neg, s_sil = open_set_scores(spec, model.predict, p.logmel, cache, p.kd.negatives.held_out, neg,
                                   len(p.ds.classes))
    res.neg_scores.update({"int8": s_neg, "silence_int8": s_sil})
    res.open_set["int8"] = tune_operating_point(cfg, p, neg, res.int8_scores, s_neg, s_sil)
    res.int8_metrics["thresholds"] = res.open_set["int8"]["thresholds"]
