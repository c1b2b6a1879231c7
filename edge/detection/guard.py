"""The signal guard: a window with no signal never becomes a detection.

A dead microphone, a disconnected cable or a broken file gives digital
silence, a constant (DC) level or non-finite samples (NaN, Inf in a float
WAV). The model's normalisation stretches such input into anything - one
default model scored ten minutes of silence as a tody - so the pipeline asks
the guard about every window before it runs the model:

- non-finite samples are replaced by 0 as they arrive (``clean``), so they
  never reach the front-end or the model, and every window that overlaps
  one is refused;
- a window whose samples all lie within ``FLAT_PEAK_TO_PEAK`` of each other
  (silence, constant input: 2 LSB of 16-bit audio) is refused.

A refused window is not run through the model: every species scores -1,
below any threshold (thresholds are 0..1, even 0 is not met), so open
events close as for a quiet window. It is counted: ``no_signal_windows``
in total and ``streak`` (consecutive refused windows now), which the health
snapshot reports so a dead microphone shows up as an alarm, not as a bird.

Bookkeeping is per cell of ``hop`` samples (the front-end's hop): the
lowest and highest sample of each cell and whether it held a non-finite
one, indexed by sample position in the current segment.
"""
from __future__ import annotations

import numpy as np

FLAT_PEAK_TO_PEAK = 2.0 ** -14  # 2 LSB of 16-bit audio


class SignalGuard:
    def __init__(self, hop: int, flat: float = FLAT_PEAK_TO_PEAK):
        self.hop = int(hop)
        self.flat = float(flat)
        self.no_signal_windows = 0  # since start
        self.nonfinite_samples = 0  # since start
        self.streak = 0  # consecutive windows without signal, now
        self.reset()

    def reset(self) -> None:
        """A new segment: sample positions count from 0 again."""
        self._lo = np.zeros(0, np.float32)
        self._hi = np.zeros(0, np.float32)
        self._bad = np.zeros(0, bool)
        self._cell0 = 0  # segment cell index of self._lo[0]
        self._pending = np.zeros(0, np.float32)  # samples of the last, incomplete cell
        self._pending_bad = False

    def clean(self, x: np.ndarray) -> np.ndarray:
        """Record the samples' cells; return them with non-finite values replaced by 0."""
        finite = np.isfinite(x)
        bad = not finite.all()
        if bad:
            self.nonfinite_samples += int(x.size - np.count_nonzero(finite))
            x = np.where(finite, x, np.float32(0)).astype(np.float32)
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = len(buf) // self.hop
        if n:
            cells = buf[: n * self.hop].reshape(n, self.hop)
            lo, hi = cells.min(axis=1), cells.max(axis=1)
            cbad: np.ndarray = np.zeros(n, bool)
            if bad or self._pending_bad:
                src_bad = np.concatenate([np.full(len(self._pending), self._pending_bad), ~finite])
                cbad = np.asarray(src_bad[: n * self.hop].reshape(n, self.hop).any(axis=1))
                self._pending_bad = bool(src_bad[n * self.hop:].any())
            self._lo = np.concatenate([self._lo, lo])
            self._hi = np.concatenate([self._hi, hi])
            self._bad = np.concatenate([self._bad, cbad])
        elif bad:
            self._pending_bad = True
        self._pending = buf[n * self.hop:].copy()
        return x

    def has_signal(self, start_sample: int, n_samples: int) -> bool:
        """Whether the window [start, start + n) carries signal; counts it when not."""
        a = max(0, start_sample // self.hop - self._cell0)
        b = max(a, -(-(start_sample + n_samples) // self.hop) - self._cell0)
        lo, hi, bad = self._lo[a:b], self._hi[a:b], self._bad[a:b]
        tail = self._pending if b + self._cell0 >= self._cell0 + len(self._lo) else np.zeros(0, np.float32)
        tail_bad = self._pending_bad and len(tail) > 0
        if len(lo) or len(tail):
            low = min(lo.min() if len(lo) else np.inf, tail.min() if len(tail) else np.inf)
            high = max(hi.max() if len(hi) else -np.inf, tail.max() if len(tail) else -np.inf)
            ok = not (bad.any() or tail_bad) and high - low > self.flat
        else:
            ok = False
        if ok:
            self.streak = 0
        else:
            self.no_signal_windows += 1
            self.streak += 1
        return ok

    def forget_before(self, sample: int) -> None:
        """No window will start before ``sample`` again: drop its cells."""
        drop = min(len(self._lo), sample // self.hop - self._cell0)
        if drop > 0:
            self._lo, self._hi, self._bad = self._lo[drop:], self._hi[drop:], self._bad[drop:]
            self._cell0 += drop
