"""Streaming polyphase resampling in numpy, the same filter as scipy's resample_poly.

``scipy.signal`` costs about 70 MB of resident memory and half a second to
import, which is most of the edge's budget on a Pi, so the edge resamples
with this small numpy equivalent: the Kaiser-windowed sinc low-pass that
``scipy.signal.resample_poly`` designs by default (``firwin(20*max(up, down)+1,
1/max(up, down), window=('kaiser', 5.0))``), applied block by block with its
state carried across blocks. Concatenated outputs equal one ``resample_poly``
call on the whole signal (the tests check this against scipy).
"""
from __future__ import annotations

from math import gcd

import numpy as np


def lowpass_taps(up: int, down: int, beta: float = 5.0) -> np.ndarray:
    """resample_poly's default filter, scaled by ``up``: (2*half_len+1,) float64."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    numtaps = 2 * half_len + 1
    cutoff = 1.0 / max_rate
    m = np.arange(numtaps) - half_len
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    return h / h.sum() * up


class StreamResampler:
    """Resample a float32 stream from ``rate_in`` to ``rate_out`` block by block.

    ``process(x)`` returns the output samples that are complete given the
    input so far; ``flush()`` returns the rest (the signal is taken to be
    zero after its end, as resample_poly does).
    """

    def __init__(self, rate_in: int, rate_out: int, chunk: int = 16384):
        g = gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        h = lowpass_taps(self.up, self.down)
        self.half_len = (len(h) - 1) // 2
        self.taps = -(-len(h) // self.up)  # input samples per output sample
        poly = np.zeros(self.up * self.taps, dtype=np.float64)
        poly[: len(h)] = h
        # phase r, tap k -> h[r + k*up]; applied to x[i_max - k]
        self._poly = poly.reshape(self.taps, self.up).T.astype(np.float32)
        self._buf = np.zeros(0, dtype=np.float32)  # input samples from absolute index self._base
        self._base = 0
        self._n_in = 0
        self._j = 0  # next output index
        self._chunk = chunk

    @property
    def identity(self) -> bool:
        return self.up == self.down == 1

    def _emit(self, j_end: int) -> np.ndarray:
        """Outputs self._j .. j_end-1 from the buffered input (zeros outside it)."""
        outs = []
        k = np.arange(self.taps)
        while self._j < j_end:
            j = np.arange(self._j, min(j_end, self._j + self._chunk))
            t = j * self.down + self.half_len
            i_max = t // self.up
            r = t - i_max * self.up
            idx = i_max[:, None] - k[None, :] - self._base
            valid = (idx >= 0) & (idx < len(self._buf)) & (idx + self._base < self._n_in)
            gathered = np.where(valid, self._buf[np.clip(idx, 0, max(len(self._buf) - 1, 0))] if len(self._buf) else 0.0, 0.0)
            outs.append(np.einsum("nk,nk->n", gathered.astype(np.float32, copy=False), self._poly[r]))
            self._j = int(j[-1]) + 1
        # keep only the input the next outputs can still need
        t_next = self._j * self.down + self.half_len
        keep_from = t_next // self.up - (self.taps - 1)
        drop = max(0, min(keep_from - self._base, len(self._buf)))
        if drop:
            self._buf = self._buf[drop:]
            self._base += drop
        return np.concatenate(outs).astype(np.float32, copy=False) if outs else np.zeros(0, np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.identity:
            return x
        self._buf = np.concatenate([self._buf, x])
        self._n_in += len(x)
        # output j is complete when its newest input (i_max) has arrived
        j_end = max(0, (self._n_in * self.up - self.half_len - 1) // self.down + 1) if self._n_in else 0
        j_end = max(j_end, self._j)
        return self._emit(j_end)

    def flush(self) -> np.ndarray:
        if self.identity:
            return np.zeros(0, np.float32)
        n_out = -(-self._n_in * self.up // self.down)
        return self._emit(n_out)
