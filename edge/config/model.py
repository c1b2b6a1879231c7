"""``model:`` which signed bundle to run, the key it must verify with, interpreter threads, window overlap."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from edge.config.base import DEFAULT_BUNDLE, DEFAULT_PUBLIC_KEY, Section


class ModelConfig(Section):
    bundle: Optional[Path] = None  # None: the bundled default model
    public_key: Optional[Path] = None  # None: the bundled default model's key
    models_dir: Optional[Path] = None  # where updates are installed; default <state_dir>/models
    num_threads: int = Field(1, ge=1, le=16)
    overlap_s: Optional[float] = Field(None, ge=0)  # None: window_s - bundle hop_s
    max_bundle_mb: float = Field(8, gt=0, le=512)  # a received bundle costs ~3x its size in memory

    @property
    def bundle_path(self) -> Path:
        return self.bundle or DEFAULT_BUNDLE

    @property
    def public_key_path(self) -> Path:
        return self.public_key or DEFAULT_PUBLIC_KEY
