"""A real segment bundle (edge/contract/segment.py): the tiny training run's model (fixtures_trainer.tiny_run)
converted by the trainer (trainer.segment.segment_int8) to score ``SEGMENT_WINDOWS`` windows per invoke, full
int8, signed with the run's key beside its per-window bundle (same front-end, same labels).

The tiny run's randomly initialised backbone barely tells windows apart: at int8 its segment model's rows depend
on a window's place in its chunk (4 distinct rows over the demo recording), hardly on its audio. Tests that must
see each window's own features in its place also run the pipeline with ``ProbeModel``, a numpy function of the
segment input, on the same bundle's geometry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SEGMENT_WINDOWS = 4  # small, so short real recordings hold several chunks and a partial one


class ProbeModel:
    """Scores (W, 3) from a segment input: per window, the mean of its own frames over three mel bands, so a
    window's row moves with its features and its place; counts its invokes."""

    def __init__(self, spec):
        self.spec, self.calls = spec, 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert x.shape == self.spec.input_shape
        self.calls += 1
        s, bands = self.spec, np.array_split(np.arange(self.spec.n_mels), 3)
        rows = [[x[b, k * s.hop_frames:k * s.hop_frames + s.window_frames, 0].mean() for b in bands]
                for k in range(s.windows)]
        return np.asarray(rows, np.float32)


@dataclass
class SegmentRun:
    bundle_path: Path  # the segment bundle
    window_bundle_path: Path  # the same run's per-window bundle
    public_key_path: Path


@pytest.fixture(scope="session")
def segment_run(tiny_run, tmp_path_factory) -> SegmentRun:
    pytest.importorskip("tensorflow")
    import keras

    from edge.contract.bundle import load_bundle
    from edge.contract.segment import SegmentSpec, hop_frames_of
    from edge.contract.signing import load_public_key
    from trainer.bundle import write_bundle
    from trainer.segment import representative_segments, segment_int8

    window = load_bundle(tiny_run.bundle_path, load_public_key(tiny_run.public_key_path))
    fe = window.frontend
    spec = SegmentSpec(windows=SEGMENT_WINDOWS, hop_frames=hop_frames_of(window.hop_s, fe),
                       window_frames=fe.n_frames, n_mels=fe.n_mels)
    prep = tiny_run.result.prepared
    rep = representative_segments(spec, prep.logmel, [prep.frames[r.id] for r in prep.train.recordings], 16)
    model = keras.models.load_model(tiny_run.out / "model.keras", compile=False)
    kind = window.manifest["tensors"].get("output_kind", "probability")
    blob = segment_int8(model, spec, rep, output_kind=kind)
    labels = window.labels
    path = tmp_path_factory.mktemp("segment-bundle") / "tiny-segment.bundle"
    write_bundle(path, model_bytes=blob, classes=[lab.label for lab in labels],
                 names={lab.label: (lab.scientific_name, lab.common_name) for lab in labels}, frontend=fe,
                 hop_s=window.hop_s, thresholds=dict(window.manifest["thresholds"]), selftest_features=rep[0],
                 private_key=tiny_run.private_key, name="tiny-segment", version=f"{window.version}-seg",
                 output_kind=kind, min_windows=window.min_windows, segment=spec)
    return SegmentRun(path, tiny_run.bundle_path, tiny_run.public_key_path)
