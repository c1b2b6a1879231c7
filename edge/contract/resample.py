"""Sample-rate conversion, the same for the trainer and the edge: libsoxr (python-soxr).

Recorders write 22.05, 24, 44.1 or 48 kHz; the front-end wants its own rate
(32 kHz by default), so audio is resampled before it becomes features. Train
and serve must resample the same way, so this module is the one place that
does it, whole signals (``resample``, the trainer) and streams block by block
(``StreamResampler``, files and microphones on the edge).

libsoxr is compiled (about 3,000x realtime per core for 48 -> 32 kHz against
150x for the numpy polyphase filter it replaces), small (a few hundred kB,
about 1 MB resident; ``scipy.signal`` costs 70-100 MB) and has wheels for
aarch64 and x86-64 on every supported Python. Quality ``HQ`` (soxr's
default: 20-bit precision, linear phase, pass band to 91 % of the lower
Nyquist, i.e. 14.6 kHz for 48 -> 32 kHz, above the front-end's 14 kHz
``fmax``). A stream fed in blocks of any size gives exactly the samples one
``resample`` call on the whole signal gives (``tests/test_resample.py``),
so a file replayed on the edge and the same file decoded by the trainer
produce the same features.

Files are resampled in fixed blocks (``FileResampler``): block ``b`` is the
input from ``b * BLOCK_S`` seconds to the next block, resampled in one call
with ``MARGIN_S`` of the neighbouring input either side and trimmed. The
result is within float rounding (5e-7) of one continuous stream, and the
samples of any part of a file depend only on the file, not on where reading
began: a worker that starts at block ``b`` (``edge.sources.pieces``) computes
bit for bit what a replay of the whole file computes there, so a long file
split over several processes gives exactly the results of one process.
A microphone stream is continuous and must not wait seconds for a block, so
live capture uses ``StreamResampler``.
"""
from __future__ import annotations

import numpy as np

QUALITY = "HQ"


BLOCK_S = 5.0  # files are resampled in blocks of this much input, each on its own
MARGIN_S = 0.1  # of neighbouring input either side of a block (the filter's support is a few ms)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """The whole mono signal ``x`` at ``rate_out`` as a file is resampled: float32,
    ``round(len(x) * rate_out / rate_in)`` samples."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if int(rate_in) == int(rate_out) or not len(x):
        return x
    r = FileResampler(rate_in, rate_out)
    return np.concatenate([r.process(x), r.flush()])


class FileResampler:
    """Resample a file's mono float32 samples block by block (see the module's doc).

    ``start_block``: the input fed starts at block ``start_block``'s first
    sample minus the margin (``input_start(start_block)``), and the output at
    block ``start_block``'s first output sample (``output_start``).
    ``process(x)`` returns every block completed by the input so far,
    ``flush()`` (at the end of the file) the rest.
    """

    def __init__(self, rate_in: int, rate_out: int, start_block: int = 0):
        from math import ceil, gcd

        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        g = gcd(self.rate_in, self.rate_out)
        step_in, step_out = self.rate_in // g, self.rate_out // g  # the smallest whole-sample pair
        self.block_in = step_in * max(1, round(BLOCK_S * self.rate_in / step_in))
        self.block_out = self.block_in // step_in * step_out
        self.margin_in = step_in * max(1, ceil(MARGIN_S * self.rate_in / step_in))
        self.margin_out = self.margin_in // step_in * step_out
        self._block = int(start_block)
        self._base = self.input_start(self._block)  # absolute input index of self._store[0]
        self._store = np.zeros(0, np.float32)  # the input not yet resampled is self._store[:self._n]
        self._n = 0

    @property
    def identity(self) -> bool:
        return self.rate_in == self.rate_out

    def input_start(self, block: int) -> int:
        """Where the input must start for a resampler beginning at ``block``."""
        return max(0, block * self.block_in - self.margin_in)

    def output_start(self, block: int) -> int:
        return block * self.block_out

    def block_of_output(self, sample: int) -> int:
        """The block holding output sample ``sample``."""
        return sample // self.block_out

    def _run(self, end: int, last: bool) -> np.ndarray:
        """Resample input [block start - margin, end) and keep block self._block's output onwards."""
        import soxr

        lo = self._block * self.block_in - self.margin_in
        skip = self.margin_out if lo > 0 else 0
        seg = self._store[max(lo, 0) - self._base : end - self._base]
        out = soxr.resample(seg, self.rate_in, self.rate_out, quality=QUALITY)
        return out[skip:] if last else out[skip : skip + self.block_out]

    def _append(self, x: np.ndarray) -> None:
        """x after the input held, in one buffer kept from call to call (no new array per call: a worker's
        peak memory and the copies)."""
        need = self._n + len(x)
        if need > len(self._store):
            grown = np.empty(max(need, self.block_in + 2 * self.margin_in + len(x)), np.float32)
            grown[: self._n] = self._store[: self._n]
            self._store = grown
        self._store[self._n : need] = x
        self._n = need

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.identity:
            return x
        self._append(x)
        outs = []
        while self._base + self._n >= (self._block + 1) * self.block_in + self.margin_in:
            outs.append(self._run((self._block + 1) * self.block_in + self.margin_in, last=False))
            self._block += 1
        keep = self.input_start(self._block) - self._base
        if keep > 0:  # what the next block needs moves to the front (a few tenths of a second)
            rest = self._n - keep
            self._store[:rest] = self._store[keep : self._n].copy()
            self._base += keep
            self._n = rest
        return (outs[0] if len(outs) == 1 else np.concatenate(outs)) if outs else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """The output after the last whole block (the input has ended)."""
        if self.identity or self._base + self._n <= self._block * self.block_in:
            return np.zeros(0, np.float32)
        out = self._run(self._base + self._n, last=True)
        self._store, self._n = np.zeros(0, np.float32), 0
        return out


class StreamResampler:
    """Resample a mono float32 stream from ``rate_in`` to ``rate_out`` block by block.

    ``process(x)`` returns the output samples that are ready given the input
    so far (soxr holds back a few ms for its filter); ``flush()`` returns the
    rest. Output sample ``j`` is at time ``j / rate_out`` from the stream's
    start whatever the block sizes: the filter's delay is compensated.
    """

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._soxr = None
        if not self.identity:
            import soxr

            self._soxr = soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32", quality=QUALITY)

    @property
    def identity(self) -> bool:
        return self.rate_in == self.rate_out

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._soxr is None:
            return x
        return self._soxr.resample_chunk(x)

    def flush(self) -> np.ndarray:
        if self._soxr is None:
            return np.zeros(0, np.float32)
        return self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
