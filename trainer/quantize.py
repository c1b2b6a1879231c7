"""Full-integer int8 post-training quantization (int8 input and output)."""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def quantize_int8(model, representative: np.ndarray) -> bytes:
    """Convert a Keras model to a full-integer TFLite flatbuffer.

    `representative` is a (n, *input_shape) array of float training windows;
    it sets the activation ranges, so it should look like what the edge feeds.
    """
    import tensorflow as tf

    if len(representative) < 1:
        raise ValueError("quantization needs at least one representative window")

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
