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
