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
"""
from __future__ import annotations

import numpy as np

QUALITY = "HQ"


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """The whole mono signal ``x`` at ``rate_out``: float32, ``round(len(x) * rate_out / rate_in)`` samples."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if int(rate_in) == int(rate_out) or not len(x):
        return x
    import soxr

    return soxr.resample(x, int(rate_in), int(rate_out), quality=QUALITY)


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
