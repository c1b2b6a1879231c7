"""Assemble and sign a model bundle from an int8 model (format: edge/contract/bundle.py)."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.contract.bundle import Label, build_bundle
from edge.contract.frontend import FrontendParams
from edge.contract.interpreter import Int8Model
from edge.contract.segment import SegmentSpec

log = logging.getLogger(__name__)


def selftest_vector(model: Int8Model, features: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """A fixed int8 input (a real window, or a segment's input, quantized) and the int8 output the model gives
    (flattened: a segment model's rows one after the other)."""
    x = model.quantize(features[None]).reshape(model.input_shape)
    return x, [int(v) for v in model.invoke_int8(x).reshape(-1)]


def write_bundle(path: str | Path, *, model_bytes: bytes, classes: list[str], names: dict[str, tuple[str, str]],
                 frontend: FrontendParams, hop_s: float, thresholds: dict[str, float], selftest_features: np.ndarray,
                 private_key, name: str = "dawnchorus", version: str | None = None, training: dict | None = None,
                 metrics: dict | None = None, extra: dict | None = None, output_kind: str = "probability",
                 min_windows: int = 1, segment: SegmentSpec | None = None) -> Path:
    """``segment``: the model scores that many windows per invoke (edge.contract.segment); then
    ``selftest_features`` is one segment's input."""
    model = Int8Model(model_bytes, num_threads=1, output_kind=output_kind)
    x, out = selftest_vector(model, selftest_features)
    labels = [Label(label=c, scientific_name=names.get(c, (c.replace("_", " "), ""))[0],
                    common_name=names.get(c, ("", ""))[1]) for c in classes]
    version = version or datetime.now(timezone.utc).strftime("%Y.%m.%d.%H%M%S")
    data = build_bundle(name=name, version=version, model_bytes=model_bytes, labels=labels, frontend=frontend,
                        hop_s=hop_s, thresholds=thresholds, selftest_input=x, selftest_output=out,
                        private_key=private_key, input_shape=list(model.input_shape),
                        output_shape=list(model.output_shape), training=training, metrics=metrics, extra=extra,
                        output_kind=output_kind, min_windows=min_windows, segment=segment)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(p)
    log.info("wrote %s (%.2f MB, version %s)", p, len(data) / 1e6, version)
    return p
