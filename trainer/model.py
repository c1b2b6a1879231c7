"""MobileNetV2 over the log-mel image: (n_mels, n_frames, 1) in, sigmoid scores out.

The single channel is tiled to three inside the model, so ImageNet weights
apply unchanged and the edge feeds one channel. BatchNorm momentum defaults
to 0.9: with Keras's 0.999 the running statistics lag far behind the new
(spectrogram) domain during a short fine-tune and validation gets worse
(measured 0.69 -> 0.60 macro ROC-AUC; 0.9 fixed it).
"""
from __future__ import annotations

import logging
import re
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from .config import ModelSection

log = logging.getLogger(__name__)

N_BLOCKS = 16  # MobileNetV2 inverted-residual blocks block_1 .. block_16


class ModelError(ValueError):
    pass


@dataclass
class Parts:
    model: Any  # features -> scores
    embedder: Any  # features -> pooled backbone features
    head: Any  # pooled features -> scores (and the predicted teacher embedding when distilling)
    backbone: Any
    train_model: Any = None  # features -> outputs trained on (model, or [scores, embedding])


def _block_index(name: str) -> int:
    """Block number of a MobileNetV2 layer: 0 for the stem, 1..16, 17 for the top conv."""
    m = re.match(r"block_(\d+)_", name)
    if m:
        return int(m.group(1))
    if name.startswith(("Conv_1", "out_relu")):
        return N_BLOCKS + 1
    return 0


def build_model(cfg: ModelSection, input_shape: tuple[int, int, int], n_classes: int, seed: int = 0,
                distill_dim: int = 0, aux_dim: int = 0, aux_activation: str = "sigmoid") -> Parts:
    """distill_dim > 0: the head predicts a teacher embedding of that size and classifies from it.
    aux_dim > 0: a second head, beside the classes, predicts aux_dim teacher targets from the same pooled
    features (trained, never exported: `model` has the classes only). At most one of the two."""
    import keras
    from keras import layers

    if distill_dim and aux_dim:
        raise ModelError("a teacher embedding to classify from (distill_dim) and an auxiliary head (aux_dim) "
                         "cannot be combined")
    keras.utils.set_random_seed(seed)
    weights = cfg.weights
    path = None
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"model.weights: {path} is not a file (use 'imagenet', 'none' or a .weights.h5 path)")
    if cfg.mode != "scratch" and weights == "none":
        log.warning("mode %s without pretrained weights: the backbone starts random", cfg.mode)
    h, w, _ = input_shape
    backbone = keras.applications.MobileNetV2(
        input_shape=(h, w, 3), alpha=cfg.alpha, include_top=False,
        weights="imagenet" if weights == "imagenet" else None)
    if path is not None:
        try:
            backbone.load_weights(str(path))
        except Exception as exc:  # shape mismatch (alpha), not an h5 file, ...
            raise ModelError(f"cannot load weights {path} into MobileNetV2 alpha={cfg.alpha}: {exc}") from exc
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = cfg.bn_momentum

    inp = keras.Input(shape=input_shape, name="logmel")
    x = layers.Concatenate(axis=-1, name="tile3")([inp, inp, inp])
    x = backbone(x)
    pooled = _pool(layers, x, cfg.pooling)
    embedder = keras.Model(inp, pooled, name="embedder")

    head_in = keras.Input(shape=(pooled.shape[-1],), name="pooled")
    features, second = head_in, None  # second: the trained-only output beside the scores
    if distill_dim:
        features = second = layers.Dense(distill_dim, name="teacher_embedding")(head_in)
    y = layers.Dropout(cfg.dropout, name="dropout")(features)
    y = layers.Dense(n_classes, activation="sigmoid", name="scores")(y)
    if aux_dim:
        second = layers.Dense(aux_dim, activation=aux_activation, name="teacher_aux")(head_in)
    if second is None:
        head = keras.Model(head_in, y, name="head")
        model = train_model = keras.Model(inp, head(embedder(inp)), name="dawnchorus")
    else:
        head = keras.Model(head_in, [y, second], name="head")
        outs = head(embedder(inp))
        model = keras.Model(inp, outs[0], name="dawnchorus")
        train_model = keras.Model(inp, outs, name="dawnchorus_distill")
    parts = Parts(model, embedder, head, backbone, train_model)
    set_trainable(parts, cfg.mode, cfg.finetune_blocks)
    return parts


def _pool(layers, x, kind: str):
    """Backbone feature map (freq, time, ch) -> one vector. avg: the global average; avgmax: the mean over
    frequency, then the mean and the max over time side by side (a short call in a long window keeps its
    column's weight, as in PANNs)."""
    if kind == "avg":
        return layers.GlobalAveragePooling2D(name="pool")(x)
    f = layers.AveragePooling2D(pool_size=(int(x.shape[1]), 1), name="pool_freq")(x)  # (1, time, ch)
    return layers.Concatenate(name="pool")([layers.GlobalAveragePooling2D(name="pool_mean")(f),
                                            layers.GlobalMaxPooling2D(name="pool_max")(f)])


def set_trainable(parts: Parts, mode: str, finetune_blocks: int) -> None:
    """frozen: only the head trains; finetune: the top N blocks and the top conv too; scratch: all."""
    bb = parts.backbone
    if mode == "frozen":
        bb.trainable = False
        return
    bb.trainable = True
    if mode == "scratch":
        return
    first = N_BLOCKS + 1 - finetune_blocks
    for layer in bb.layers:
        layer.trainable = _block_index(layer.name) >= first
    n = sum(int(layer.trainable) for layer in bb.layers)
    log.info("fine-tuning %d of %d backbone layers (blocks >= %d)", n, len(bb.layers), first)


def calibrate_batchnorm(parts: Parts, batches) -> None:
    """Data-dependent BatchNorm statistics for a randomly initialised backbone.

    Keras's initial moving statistics (mean 0, variance 1) make a random
    MobileNetV2 collapse its activations to ~1e-11 in inference mode, so a
    head trained on them learns nothing. A few forward passes in training mode
    move every BN's running statistics onto the real activations first.
    """
    bb = parts.backbone
    was = {id(layer): layer.trainable for layer in bb.layers}
    bb.trainable = True
    for x in batches:
        parts.embedder(x, training=True)
    for layer in bb.layers:
        layer.trainable = was[id(layer)]
