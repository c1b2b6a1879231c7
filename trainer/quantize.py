"""Full-integer int8 post-training quantization (int8 input and output)."""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def logit_model(model):
    """The same network ending before its sigmoid: embedder, head layers, then a linear copy of 'scores'.

    Dropout is left out (identity at inference). Weights are shared with `model`.
    """
    import keras

    embedder, head = model.get_layer("embedder"), model.get_layer("head")
    inp = keras.Input(shape=model.input_shape[1:], name="logmel")
    x = embedder(inp)
    for layer in head.layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout)):
            continue
        if layer.name == "scores":
            dense = keras.layers.Dense(layer.units, name="logits")
            x = dense(x)
            dense.set_weights(layer.get_weights())
            return keras.Model(inp, x, name=f"{model.name}_logits")
        x = layer(x)
    raise ValueError("model has no 'scores' layer in its head")


def quantize_int8(model, representative: np.ndarray, output_kind: str = "probability") -> bytes:
    """Convert a Keras model to a full-integer TFLite flatbuffer.

    `representative` is a (n, *input_shape) array of float training windows;
    it sets the activation ranges, so it should look like what the edge feeds.
    With output_kind "logit" the converted model stops before the sigmoid.
    """
    import tensorflow as tf

    if len(representative) < 1:
        raise ValueError("quantization needs at least one representative window")
    if output_kind == "logit":
        model = logit_model(model)

    def gen():
        for x in representative:
            yield [x[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    log.info("int8 model: %.2f MB from %d representative windows", len(blob) / 1e6, len(representative))
    return bytes(blob)
