"""Int8Model.predict quantizes the edge's float32 features in place (edge/contract/interpreter.py): the same
scores as quantize -> invoke_int8 -> dequantize, with the real LiteRT interpreter on the shipped int8 models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.contract.bundle import load_bundle
from edge.contract.interpreter import load_model
from edge.contract.signing import load_public_key

MODELS = Path(__file__).resolve().parents[1] / "edge" / "models"


@pytest.mark.parametrize("name", ["default.bundle", "fast.bundle"])  # a segment model, a per-window model
def test_in_place_quantization_gives_the_reference_scores(name):
    model = load_model(load_bundle(MODELS / name, load_public_key(MODELS / "default.pub")))
    rng = np.random.default_rng(3)
    shape = model.input_shape[1:]
    for k in range(3):
        x = rng.normal(0.0, 2.0 + 3 * k, shape).astype(np.float32)  # k = 2: many beyond the int8 range
        x.flat[::97] = (np.round(x.flat[::97] / model.in_scale) + 0.5) * model.in_scale  # halfway cases
        want = model.dequantize(model.invoke_int8(model.quantize(x)))
        got = model.predict(x)
        np.testing.assert_array_equal(got, want)
        assert np.abs(got - model.predict(x + np.float32(1.0))).max() > 0  # the input reaches the model
    other = rng.normal(size=shape)  # float64 features take the reference path
    np.testing.assert_array_equal(model.predict(other), model.dequantize(model.invoke_int8(model.quantize(other))))
