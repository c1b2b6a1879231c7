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

from typing import Any

import numpy as np

QUALITY = "HQ"


BLOCK_S = 5.0  # files are resampled in blocks of this much input, each on its own
MARGIN_S = 0.1  # of neighbouring input either side of a block (the filter's support is a few ms)
PIECE_S = 1  # seconds of a block's input given to libsoxr at a time (the same samples as the whole block at once)


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
    ``process(x)`` returns the output the input so far completes,
    ``flush()`` (at the end of the file) the rest.

    Each block is one libsoxr stream, cleared before the block and fed as
    the input arrives (``PIECE_S`` at most at a time), ending with the
    block's last input sample: exactly the samples one ``soxr.resample``
    call on the block's input gives (libsoxr's output does not depend on
    how its input is cut: ``tests/test_resample.py``). Output comes out as
    it is made, not a whole block at a time, and only the input the next
    block reads again (its leading margin) is kept: a worker holds a few
    hundred kB here, not the 3 to 4 MB of whole blocks.
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
        self._pos = self.input_start(self._block)  # absolute index of the next input sample
        self._made = 0  # output samples the current block's stream has made (its margin's included)
        self._held: list[np.ndarray] = []  # those past the block's own: kept only if it is the file's last
        self._keep: list[np.ndarray] = []  # input the next block reads again (from its input_start)
        self._soxr: Any = None

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

    def _skip(self) -> int:
        """Output samples of the current block's stream that belong to the block before (its margin)."""
        return self.margin_out if self._block * self.block_in - self.margin_in > 0 else 0

    def _emit(self, y: np.ndarray, outs: list[np.ndarray]) -> None:
        """The current block's own part of ``y`` (the stream's next samples) to ``outs``; the rest held."""
        skip = self._skip()
        cap = skip + self.block_out
        lo, hi = max(self._made, skip), min(self._made + len(y), cap)
        if hi > lo:
            outs.append(y[lo - self._made : hi - self._made])
        past = max(self._made, cap)
        if self._made + len(y) > past:
            self._held.append(y[past - self._made :])
        self._made += len(y)

    def _feed(self, x: np.ndarray, last: bool, outs: list[np.ndarray]) -> None:
        if self._soxr is None:
            import soxr

            self._soxr = soxr.ResampleStream(self.rate_in, self.rate_out, 1, dtype="float32", quality=QUALITY)
        piece = self.rate_in * PIECE_S
        for i in range(0, max(len(x), 1), piece):
            self._emit(self._soxr.resample_chunk(x[i : i + piece], last=last and i + piece >= len(x)), outs)

    def _next_block(self, outs: list[np.ndarray]) -> None:
        """The current block is complete: the next one starts, from its margin."""
        self._block += 1
        self._soxr.clear()
        self._made, self._held = 0, []
        tail = np.concatenate(self._keep) if len(self._keep) > 1 else self._keep[0]
        self._keep = []
        self._feed(tail, False, outs)

    def process(self, x: np.ndarray) -> np.ndarray:
        outs = self.process_parts(x)
        return (outs[0].copy() if len(outs) == 1 else np.concatenate(outs)) if outs else np.zeros(0, np.float32)

    def process_parts(self, x: np.ndarray) -> list[np.ndarray]:
        """``process``'s output as libsoxr made it, in pieces (views: not copied into one array)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.identity:
            return [x] if len(x) else []
        outs: list[np.ndarray] = []
        i = 0
        while i < len(x):
            end = (self._block + 1) * self.block_in + self.margin_in  # the current block's last input, + 1
            part = x[i : i + min(len(x) - i, end - self._pos)]
            again = self.input_start(self._block + 1)  # the next block reads from here
            if self._pos + len(part) > again:
                self._keep.append(part[max(0, again - self._pos) :].copy())
            done = self._pos + len(part) == end
            self._feed(part, done, outs)
            self._pos += len(part)
            i += len(part)
            if done:
                self._next_block(outs)
        return outs

    def flush(self) -> np.ndarray:
        """The output after the last whole block (the input has ended)."""
        if self.identity or self._soxr is None or self._pos <= self._block * self.block_in:
            return np.zeros(0, np.float32)
        outs = list(self._held)  # the file's last block keeps all its output
        cap, self._held = self._made, []
        y = self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
        lo = max(cap, self._skip())
        if self._made + len(y) > lo:
            outs.append(y[lo - self._made :])
        self._made += len(y)
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)


class StreamResampler:
    """Resample a mono float32 stream from ``rate_in`` to ``rate_out`` block by block.

    ``process(x)`` returns the output samples that are ready given the input
    so far (soxr holds back a few ms for its filter); ``flush()`` returns the
    rest. Output sample ``j`` is at time ``j / rate_out`` from the stream's
    start whatever the block sizes: the filter's delay is compensated.
    """

    def __init__(self, rate_in: int, rate_out: int):
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._soxr: Any = None
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
