#!/usr/bin/env python3
"""Makes tests/data/tone_model.tflite: a tiny full-integer int8 model with known behaviour.

Input (1, 128, 297, 1) log-mel features (the default front-end), output 3
sigmoid scores: one per mel band group, high when a short tone burst stands
out in that group - about 1.2 kHz ("Tonus_lowus"), 3 kHz ("Tonus_midus") and
7 kHz ("Tonus_highus"). Tests use it to run the real LiteRT interpreter on
audio whose right answer is known. Needs TensorFlow; run once, commit the output.
"""
from pathlib import Path

import numpy as np
import tensorflow as tf

GROUPS = {"Tonus_lowus": 2, "Tonus_midus": 4, "Tonus_highus": 6}  # mel bands 16g..16g+15


def build():
    inp = tf.keras.Input((128, 297, 1), batch_size=1)
    x = tf.keras.layers.MaxPooling2D(pool_size=(16, 297))(inp)  # (8, 1, 1): loudest frame per band group
    x = tf.keras.layers.Flatten()(x)
    dense = tf.keras.layers.Dense(len(GROUPS), activation="sigmoid")
    out = dense(x)
    model = tf.keras.Model(inp, out)
    w = np.zeros((8, len(GROUPS)), np.float32)
    for j, g in enumerate(GROUPS.values()):
        w[g, j] = 1.5
    dense.set_weights([w, np.full(len(GROUPS), -6.0, np.float32)])
    return model


def main():
    model = build()
    rng = np.random.default_rng(0)

    def rep():
        for _ in range(64):
            x = rng.standard_normal((1, 128, 297, 1)).astype(np.float32)
            x[:, rng.integers(0, 128), :, :] += rng.uniform(0, 8)
            yield [x]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    out = Path(__file__).with_name("tone_model.tflite")
    out.write_bytes(conv.convert())
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
