"""Full-integer int8 post-training quantization (int8 input and output)."""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)


def apply_head(x, head, output_kind: str = "probability"):
    """The head's layers on ``x`` in order (any leading axes: rows are scored alike), Dropout left out (identity
    at inference) and the trained-only 'teacher_aux' branch skipped; with output_kind 'logit' a linear copy of
    'scores' ends it. Weights are shared with ``head``."""
    import keras

    for layer in head.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout)) or layer.name == "teacher_aux":
            continue
        if layer.name == "scores":
            if output_kind != "logit":
                return layer(x)
            dense = keras.layers.Dense(layer.units, name="logits")
            x = dense(x)
            dense.set_weights(layer.get_weights())
            return x
        x = layer(x)
    raise ValueError("model has no 'scores' layer in its head")


def logit_model(model):
    """The same network ending before its sigmoid: embedder, head layers, then a linear copy of 'scores'.

    Dropout is left out (identity at inference). Weights are shared with `model`.
    """
    import keras

    inp = keras.Input(shape=model.input_shape[1:], name="logmel")
    x = apply_head(model.get_layer("embedder")(inp), model.get_layer("head"), "logit")
    return keras.Model(inp, x, name=f"{model.name}_logits")


def convert_int8(model, representative: Iterable[np.ndarray], what: str = "windows") -> bytes:
    """A Keras model as a full-integer TFLite flatbuffer (int8 input and output); ``representative`` are float
    inputs without the batch axis (they set the activation ranges, so they should look like what the edge feeds)."""
    import tensorflow as tf

    reps = list(representative)
    if len(reps) < 1:
        raise ValueError(f"quantization needs at least one representative input ({what})")

    def gen():
        for x in reps:
            yield [np.asarray(x, np.float32)[None]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    log.info("int8 model: %.2f MB from %d representative %s", len(blob) / 1e6, len(reps), what)
    return bytes(blob)


def quantize_int8(model, representative: np.ndarray, output_kind: str = "probability") -> bytes:
    """Convert a Keras model to a full-integer TFLite flatbuffer.

    `representative` is a (n, *input_shape) array of float training windows;
    it sets the activation ranges, so it should look like what the edge feeds.
    With output_kind "logit" the converted model stops before the sigmoid.
    """
    if len(representative) < 1:
        raise ValueError("quantization needs at least one representative window")
    if output_kind == "logit":
        model = logit_model(model)
    return convert_int8(model, representative, "windows")
