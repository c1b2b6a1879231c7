"""One small loader for the TFLite interpreter, and int8 inference.

Prefers ai-edge-litert (LiteRT: XNNPACK runs int8, numpy 2, Python 3.13),
then tflite_runtime, then tensorflow.lite. TensorFlow is imported only as the
last resort, so the edge never pulls it in where LiteRT is installed.
"""
from __future__ import annotations

import logging

import numpy as np

from edge.contract.record import DEFAULT_OUTPUT_KIND, OUTPUT_KINDS

log = logging.getLogger(__name__)


class InterpreterError(RuntimeError):
    """A model the interpreter cannot load or run."""


def interpreter_class():
    """Return (Interpreter class, backend name)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf  # noqa: F401 - last resort only

        return tf.lite.Interpreter, "tensorflow.lite"
    except ImportError as exc:
        raise InterpreterError("no TFLite interpreter: pip install ai-edge-litert") from exc


class Int8Model:
    """A loaded full-integer model: float features in, float scores out.

    Quantization uses the tensors' own scale and zero point.
    """

    def __init__(self, model_bytes: bytes, num_threads: int = 1, output_kind: str = DEFAULT_OUTPUT_KIND):
        if output_kind not in OUTPUT_KINDS:
            raise InterpreterError(f"unknown output kind {output_kind!r}")
        self.output_kind = output_kind
        cls, self.backend = interpreter_class()
        try:
            self._interp = cls(model_content=model_bytes, num_threads=int(num_threads))
            self._interp.allocate_tensors()
        except Exception as exc:  # the interpreters raise ValueError/RuntimeError variously
            raise InterpreterError(f"cannot load model: {exc}") from exc
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise InterpreterError(f"expected one input and one output tensor, got {len(inp)} and {len(out)}")
        self._in, self._out = inp[0], out[0]
        if self._in["dtype"] != np.int8 or self._out["dtype"] != np.int8:
            raise InterpreterError(f"model is not full-integer int8 (input {self._in['dtype']}, output {self._out['dtype']})")
        self.input_shape = tuple(int(v) for v in self._in["shape"])
        self.output_shape = tuple(int(v) for v in self._out["shape"])
        self.in_scale, self.in_zero = self._in["quantization"]
        self.out_scale, self.out_zero = self._out["quantization"]
        if not self.in_scale or not self.out_scale:
            raise InterpreterError("model tensors carry no quantization parameters")
        self._in_index, self._out_index = self._in["index"], self._out["index"]
        self._qbuf = np.empty(self.input_shape, np.float32)  # predict's scratch: no new input-sized arrays per
        self._qin = np.empty(self.input_shape, np.int8)  # invoke (a segment model's float input is 0.6 MB:
        # four temporaries of it raised a Dask worker's peak)

    def quantize(self, features: np.ndarray) -> np.ndarray:
        return self._rounded(np.divide(features, self.in_scale)).astype(np.int8)

    def _rounded(self, q: np.ndarray) -> np.ndarray:
        """features / scale (``q``, changed in place) + zero point, rounded and clipped to int8's range."""
        np.add(q, self.in_zero, out=q)
        np.rint(q, out=q)
        return np.clip(q, -128, 127, out=q)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Scores in 0..1 from the int8 output (the sigmoid applied here for logit models)."""
        y = (q.astype(np.float32) - self.out_zero) * self.out_scale
        if self.output_kind == "logit":
            y = 1.0 / (1.0 + np.exp(-y))
        return y

    def invoke_int8(self, x: np.ndarray) -> np.ndarray:
        """Run one int8 input of the model's input shape (batch included); int8 output row."""
        self._interp.set_tensor(self._in_index, x.reshape(self.input_shape))
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)[0].copy()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores for one input of float features (input shape without batch): (classes,) for a window model,
        (windows, classes) for a segment model (edge.contract.segment)."""
        f = np.asarray(features)
        if f.dtype == np.float32 and f.size == self._qbuf.size:  # the edge's features: quantized in place
            np.copyto(self._qin, self._rounded(np.divide(f.reshape(self.input_shape), self.in_scale, out=self._qbuf)),
                      casting="unsafe")
            return self.dequantize(self.invoke_int8(self._qin))
        return self.dequantize(self.invoke_int8(self.quantize(features)))

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.stack([self.predict(f) for f in batch]) if len(batch) else np.zeros((0, self.output_shape[-1]), np.float32)

    def selftest(self, x: np.ndarray, expected: list[int], tolerance: int) -> tuple[bool, int]:
        """Run the bundle's self-test vector; (passed, largest deviation in int8 steps)."""
        got = self.invoke_int8(x).astype(np.int32).reshape(-1)  # a segment model's (windows, classes) flattened
        want = np.asarray(expected, dtype=np.int32)
        if got.shape != want.shape:
            return False, 255
        dev = int(np.abs(got - want).max()) if got.size else 0
        return dev <= tolerance, dev


def load_model(bundle, num_threads: int = 1) -> Int8Model:
    """Load a verified bundle's model and check it against the manifest and its self-test."""
    t = bundle.manifest["tensors"]
    model = Int8Model(bundle.model_bytes, num_threads=num_threads, output_kind=t.get("output_kind", DEFAULT_OUTPUT_KIND))
    if list(model.input_shape) != list(t["input_shape"]) or list(model.output_shape) != list(t["output_shape"]):
        raise InterpreterError(
            f"model tensors {model.input_shape}->{model.output_shape} differ from the manifest "
            f"{t['input_shape']}->{t['output_shape']}"
        )
    st = bundle.manifest["selftest"]
    ok, dev = model.selftest(bundle.selftest_input, st["output"], st["tolerance"])
    if not ok:
        raise InterpreterError(f"self-test failed: output differs by {dev} int8 steps (tolerance {st['tolerance']})")
    log.info("model %s %s loaded with %s, %d thread(s)", bundle.name, bundle.version, model.backend, num_threads)
    return model
