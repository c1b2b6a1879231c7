"""Spectrogram PNGs of detection clips, drawn with the project's own front-end.

``render_png(wav_path)`` reads a 16-bit mono WAV clip, computes its log-mel
frames with ``edge.contract.frontend.LogMel`` (the features the model saw,
before normalisation), maps the top ``TOP_DB`` dB to a perceptual colour scale
(low frequencies at the bottom) and writes the PNG with ``edge.outputs.web.png``.

numpy is imported here only. A web process that has not loaded numpy (the
standalone ``python -m edge web``: it stays small) renders in a short-lived
child process instead (``python -m edge.outputs.web.spectrogram CLIP OUT``);
``cached_png`` picks the way and keeps each PNG in a cache directory, so a
clip is drawn once.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import wave
from pathlib import Path
from edge.files import atomic_write

log = logging.getLogger(__name__)

TOP_DB = 80.0
ROW_REPEAT = 2  # each mel band is drawn this many pixels high
MAX_WIDTH = 1500  # columns; longer clips are compressed in time (10 ms a column up to 15 s)
# magma-like colour scale: (position, r, g, b)
_STOPS = [(0.0, 0, 0, 4), (0.13, 28, 16, 68), (0.25, 79, 18, 123), (0.38, 129, 37, 129), (0.5, 181, 54, 122),
          (0.63, 229, 80, 100), (0.75, 251, 135, 97), (0.88, 254, 194, 135), (1.0, 252, 253, 191)]


class SpectrogramError(ValueError):
    """A clip that cannot be drawn; the message says why."""


def _lut():
    import numpy as np

    pos = np.array([s[0] for s in _STOPS])
    x = np.linspace(0, 1, 256)
    return np.stack([np.interp(x, pos, [s[c] for s in _STOPS]) for c in (1, 2, 3)], axis=1).round().astype(np.uint8)


def read_wav(path: str | Path):
    """(float32 samples in -1..1, sample rate) of a 16-bit PCM WAV, channels mixed down."""
    import numpy as np

    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise SpectrogramError(f"{path}: only 16-bit PCM clips are drawn, not {8 * w.getsampwidth()}-bit")
            rate, ch = w.getframerate(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise SpectrogramError(f"{path}: not a readable WAV file ({exc})") from None
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if ch > 1:
        x = x[: len(x) // ch * ch].reshape(-1, ch).mean(axis=1)
    return x, rate


def render_png(wav_path: str | Path) -> bytes:
    import numpy as np

    from edge.contract.frontend import FrontendParams, LogMel
    from edge.outputs.web.png import encode_png

    x, rate = read_wav(wav_path)
    if rate < 8000:
        raise SpectrogramError(f"{wav_path}: sample rate {rate} Hz is too low to draw")
    params = FrontendParams(sample_rate=rate, fmax=min(FrontendParams.fmax, rate / 2))
    if len(x) < params.n_fft:
        raise SpectrogramError(f"{wav_path}: too short to draw ({len(x)} samples)")
    db = LogMel(params).frames(x)  # (frames, mels)
    if len(db) > MAX_WIDTH:  # a long event: neighbouring frames share a column (their loudest)
        k = -(-len(db) // MAX_WIDTH)
        db = np.pad(db, ((0, -len(db) % k), (0, 0)), mode="edge").reshape(-1, k, db.shape[1]).max(axis=1)
    top = float(db.max())
    scaled = np.clip((db - (top - TOP_DB)) / TOP_DB, 0, 1)
    idx = (scaled.T[::-1] * 255).round().astype(np.uint8)  # (mels, frames), high frequencies first
    idx = np.repeat(idx, ROW_REPEAT, axis=0)
    rgb = _lut()[idx]
    return encode_png(rgb.tobytes(), idx.shape[1], idx.shape[0], 3)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def cached_png(wav_path: Path, cache_dir: Path, key: str, *, timeout_s: float = 30.0) -> bytes:
    """The PNG of ``wav_path``, from ``cache_dir/<key>.png`` or drawn now (and cached)."""
    out = cache_dir / f"{key}.png"
    try:
        if out.stat().st_mtime >= wav_path.stat().st_mtime:
            return out.read_bytes()
    except FileNotFoundError:
        pass
    if "numpy" in sys.modules:  # already paid for (the daemon): draw here
        data = render_png(wav_path)
        _write_atomic(out, data)
        return data
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "edge.outputs.web.spectrogram", str(wav_path), str(out)],
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SpectrogramError((proc.stderr.strip().splitlines() or ["the spectrogram process failed"])[-1])
    return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edge.outputs.web.spectrogram CLIP.wav OUT.png", file=sys.stderr)
        return 2
    try:
        data = render_png(args[0])
    except (SpectrogramError, OSError) as exc:
        print(f"spectrogram: {exc}", file=sys.stderr)
        return 1
    _write_atomic(Path(args[1]), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
