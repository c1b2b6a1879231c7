"""Training-window sampling and augmentation, on log-mel frames (numpy only).

Everything happens on dB mel frames or on the normalised features, never on
audio, so the decoded-feature cache serves every epoch:

- gain: a dB offset before normalisation (mostly removed by the per-band
  median, but it moves the top_db clip and the std floor);
- Gaussian and background noise at an SNR range: mixed in the mel *power*
  domain (the power of a sum of independent signals is the sum of powers),
  from a bank of white-noise frames or from the quietest windows of the
  training recordings;
- time shift: random crops anywhere in the loud part of a recording, plus a
  jitter of a few frames;
- warp: a fractional shift along the mel axis (a small pitch shift: one of
  64 bands is about 6 % of the frequency at 3 kHz) and a stretch along the
  time axis, both by linear interpolation of the dB frames (``warp``); the
  targets stay, as a bird sings the same species a semitone higher or a
  tenth faster;
- SpecAugment time and frequency masks, and mixup (targets: the union of the
  two windows' labels) on the normalised features.
"""
from __future__ import annotations

import numpy as np

from edge.contract.frontend import LogMel

from .config import AugmentSection
from .data import Dataset, active_starts, frame_energy, pad_frames


def _db_to_power(x: np.ndarray) -> np.ndarray:
    return np.power(10.0, x / 10.0, dtype=np.float32)


def mix_at_snr(signal_db: np.ndarray, noise_db: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix two dB frame blocks in the power domain so that mean power ratio is snr_db."""
    ps, pn = _db_to_power(signal_db), _db_to_power(noise_db)
    gain = ps.mean() / max(float(pn.mean()), 1e-20) / (10.0 ** (snr_db / 10.0))
    return (10.0 * np.log10(np.maximum(ps + gain * pn, 1e-10))).astype(np.float32)


def _resample_axis(x: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """x sampled at fractional positions ``pos`` along ``axis`` (linear, clamped at the edges)."""
    pos = np.clip(pos, 0.0, x.shape[axis] - 1.0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    frac = (pos - lo).astype(np.float32)
    shape = [1, 1]
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1.0 - frac) + np.take(x, hi, axis=axis) * frac


def warp(w: np.ndarray, a: AugmentSection, rng: np.random.Generator) -> np.ndarray:
    """dB frames (frames, mels) shifted along the mel axis by up to ``a.freq_shift_bands`` bands and stretched
    in time by a factor within 1 +- ``a.time_stretch`` (about the window's centre), each with ``a.warp_prob``;
    the same shape comes back."""
    n_frames, n_mels = w.shape
    if a.freq_shift_bands > 0 and rng.random() < a.warp_prob:
        shift = rng.uniform(-a.freq_shift_bands, a.freq_shift_bands)
        w = _resample_axis(w, np.arange(n_mels) - shift, axis=1)
    if a.time_stretch > 0 and rng.random() < a.warp_prob:
        rate = rng.uniform(1.0 - a.time_stretch, 1.0 + a.time_stretch)
        c = (n_frames - 1) / 2.0
        w = _resample_axis(w, c + (np.arange(n_frames) - c) * rate, axis=0)
    return w.astype(np.float32, copy=False)


def spec_masks(x: np.ndarray, a: AugmentSection, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment time and frequency masks (in place) on normalised features (mels, frames, 1)."""
    n_mels, n_frames = x.shape[:2]
    for _ in range(a.time_masks):
        w = rng.integers(0, a.time_mask_frames + 1)
        t0 = rng.integers(0, max(1, n_frames - w))
        x[:, t0:t0 + w] = 0.0
    for _ in range(a.freq_masks):
        w = rng.integers(0, a.freq_mask_bands + 1)
        f0 = rng.integers(0, max(1, n_mels - w))
        x[f0:f0 + w, :] = 0.0
    return x


class WindowSampler:
    """Draws augmented training batches (features, targets) from cached frames."""

    def __init__(self, ds: Dataset, frames: dict[str, np.ndarray], logmel: LogMel, aug: AugmentSection,
                 energy_percentile: float, balanced: bool, seed: int, teacher=None, jitter_frames: int = 10):
        self.ds, self.frames, self.logmel, self.aug = ds, frames, logmel, aug
        self.nf = logmel.params.n_frames
        self.rng = np.random.default_rng(seed)
        self.recs = list(ds.recordings)
        self.padded = {r.id: pad_frames(frames[r.id], self.nf) for r in self.recs}
        self.starts = {r.id: active_starts(frames[r.id], self.nf, energy_percentile) for r in self.recs}
        self.targets = {r.id: ds.targets(r) for r in self.recs}
        by_class: dict[str, list[int]] = {}
        for i, r in enumerate(self.recs):
            by_class.setdefault(r.label, []).append(i)
        self.by_class = [np.array(v) for v in by_class.values()]
        self.balanced = balanced
        self.teacher, self.jitter = teacher, jitter_frames
        if teacher is not None:  # train only on windows the teacher has seen
            self.recs = [r for r in self.recs if r.id in teacher.starts]
            by_class = {}
            for i, r in enumerate(self.recs):
                by_class.setdefault(r.label, []).append(i)
            self.by_class = [np.array(v) for v in by_class.values()]
        self._noise_bank = self._white_noise_frames()
        self._background = self._quiet_windows()

    def _white_noise_frames(self) -> np.ndarray:
        p = self.logmel.params
        n = p.window_samples * 4
        noise = self.rng.standard_normal(n).astype(np.float32) * 0.01
        return self.logmel.frames(noise)

    def _quiet_windows(self, per_rec: int = 4) -> list[tuple[str, int]]:
        out = []
        for r in self.recs:
            f = self.padded[r.id]
            e = frame_energy(f)
            csum = np.concatenate([[0.0], np.cumsum(e)])
            win = (csum[self.nf:] - csum[:-self.nf]) / self.nf
            low = np.flatnonzero(win <= np.percentile(win, 20))
            for s in self.rng.choice(low, size=min(per_rec, len(low)), replace=False):
                out.append((r.id, int(s)))
        return out

    def _pick_recording(self) -> int:
        if self.balanced:
            cls = self.by_class[self.rng.integers(len(self.by_class))]
            return int(cls[self.rng.integers(len(cls))])
        return int(self.rng.integers(len(self.recs)))

    def raw_window(self, i: int) -> tuple[np.ndarray, int | None]:
        """A training crop and, when there is a teacher, its row in the teacher's targets."""
        rid = self.recs[i].id
        f = self.padded[rid]
        if self.teacher is not None:
            k = self.rng.integers(len(self.teacher.starts[rid]))
            s = int(self.teacher.starts[rid][k]) + int(self.rng.integers(-self.jitter, self.jitter + 1))
            s = int(np.clip(s, 0, len(f) - self.nf))
            return f[s:s + self.nf].astype(np.float32), int(self.teacher.index[rid][k])
        s = int(self.starts[rid][self.rng.integers(len(self.starts[rid]))])
        if self.aug.enabled and self.aug.time_shift_frames:
            j = self.aug.time_shift_frames
            s = int(np.clip(s + self.rng.integers(-j, j + 1), 0, len(f) - self.nf))
        return f[s:s + self.nf].astype(np.float32), None

    def _noisy(self, w: np.ndarray) -> np.ndarray:
        a, rng = self.aug, self.rng
        if a.gain_db:
            w = w + rng.uniform(-a.gain_db, a.gain_db)
        if self._background and rng.random() < a.background_noise_prob:
            rid, s = self._background[rng.integers(len(self._background))]
            w = mix_at_snr(w, self.padded[rid][s:s + self.nf].astype(np.float32), rng.uniform(a.snr_db_min, a.snr_db_max))
        if rng.random() < a.gaussian_noise_prob:
            s = int(rng.integers(len(self._noise_bank) - self.nf + 1))
            w = mix_at_snr(w, self._noise_bank[s:s + self.nf], rng.uniform(a.snr_db_min, a.snr_db_max) + 10.0)
        return w

    def _masks(self, x: np.ndarray) -> np.ndarray:
        return spec_masks(x, self.aug, self.rng)

    def sample(self, augment: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        i = self._pick_recording()
        w, row = self.raw_window(i)
        y, t = self.targets[self.recs[i].id], None
        if row is not None and self.teacher.soft is not None:
            y = self.teacher.soft[row]  # teacher-informed window labels
        elif row is not None:
            t = self.teacher.standardized(row)
        aug = augment and self.aug.enabled
        if aug:
            w = self._noisy(warp(w, self.aug, self.rng))
        x = self.logmel.features(w)
        if aug:
            x = self._masks(x)
        return x, y, t

    def batch(self, size: int, augment: bool = True):
        """(features, targets, teacher embeddings or None)."""
        xs, ys, ts = zip(*(self.sample(augment) for _ in range(size)))
        x, y = np.stack(xs), np.stack(ys)
        t = np.stack(ts) if ts[0] is not None else None
        a = self.aug
        if augment and a.enabled and a.mixup_prob > 0:
            perm = self.rng.permutation(size)
            do = self.rng.random(size) < a.mixup_prob
            lam = np.clip(self.rng.beta(a.mixup_alpha, a.mixup_alpha, size), 0.2, 0.8).astype(np.float32)
            lam = np.where(do, lam, 1.0).astype(np.float32)
            x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[perm]
            y = np.where(do[:, None], np.maximum(y, y[perm]), y)
            if t is not None:
                t = lam[:, None] * t + (1 - lam[:, None]) * t[perm]
        return x.astype(np.float32), y.astype(np.float32), t
