"""Fixtures for the replay pipeline's tests: a signed bundle around the tiny tone
model (tests/data/tone_model.tflite, see make_tone_model.py) and tone-burst audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.contract.bundle import Label, build_bundle, load_bundle
from edge.contract.frontend import FrontendParams
from edge.contract.signing import generate_keypair, load_private_key, load_public_key

DATA = Path(__file__).parent / "data"
TONES = {"Tonus_lowus": 1200.0, "Tonus_midus": 3000.0, "Tonus_highus": 7000.0}
SR = 32000


def tone_bursts(freq: float, seconds: float, sr: int = SR, burst_s: float = 0.25, period_s: float = 1.0,
                amp: float = 0.3, noise: float = 0.003, seed: int = 0) -> np.ndarray:
    """Quiet noise with a short tone burst every ``period_s``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = (rng.standard_normal(n) * noise).astype(np.float32)
    t = np.arange(int(burst_s * sr)) / sr
    burst = (amp * np.sin(2 * np.pi * freq * t) * np.hanning(len(t))).astype(np.float32)
    for s in range(0, n - len(burst), int(period_s * sr)):
        x[s : s + len(burst)] += burst
    return x


def noise(seconds: float, sr: int = SR, level: float = 0.003, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * level).astype(np.float32)


def make_tone_bundle(dirpath: Path, version: str = "1.0.0", hop_s: float = 1.5, name: str = "tones") -> Path:
    """A signed bundle of the tone model in dirpath (keys there too); returns its path."""
    from edge.contract.interpreter import Int8Model

    if not (dirpath / "signing.key").exists():
        generate_keypair(dirpath)
    model_bytes = (DATA / "tone_model.tflite").read_bytes()
    fe = FrontendParams()
    m = Int8Model(model_bytes)
    x = np.random.default_rng(0).integers(-128, 128, size=m.input_shape, dtype=np.int8)
    out = m.invoke_int8(x)
    labels = [Label(k, k.replace("_", " "), f"{k.split('_')[1].capitalize()} tone") for k in TONES]
    data = build_bundle(
        name=name, version=version, model_bytes=model_bytes, labels=labels, frontend=fe, hop_s=hop_s,
        thresholds={k: 0.5 for k in TONES}, selftest_input=x, selftest_output=[int(v) for v in out],
        private_key=load_private_key(dirpath / "signing.key"),
        input_shape=list(m.input_shape), output_shape=list(m.output_shape),
    )
    path = dirpath / f"{name}-{version}.bundle"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def tone_bundle_path(tmp_path_factory) -> Path:
    return make_tone_bundle(tmp_path_factory.mktemp("tone-bundle"))


@pytest.fixture(scope="session")
def tone_bundle(tone_bundle_path):
    return load_bundle(tone_bundle_path, load_public_key(tone_bundle_path.parent / "signing.pub"))


@pytest.fixture(scope="session")
def tone_model(tone_bundle):
    from edge.contract.interpreter import load_model

    return load_model(tone_bundle)
