"""A pool of augmented 3 s windows, each a deterministic recipe (numpy only).

A recipe is a small JSON-able dict: which recording and offset, an optional
mixup partner and its level, an optional background (a negative recording or
synthetic noise) at an SNR, a gain, clipping; or a purely synthetic negative
(digital silence, a constant, mains hum, wind-like or rain-like noise, tones,
clipped noise). ``render(recipe, audio)`` builds the mixed audio at
``POOL_RATE`` (32 kHz) bit-for-bit the same every time, so the teacher
(BirdNET, at 48 kHz: the same audio resampled) scores exactly the audio the
student later sees (its log-mel of the same samples).

Recordings are referenced by their content key (sha1 of the file), so a cached
teacher score belongs to the audio, not to a path.
"""
from __future__ import annotations

import numpy as np

POOL_RATE = 32000
WINDOW_S = 3.0
N = int(POOL_RATE * WINDOW_S)
SYNTHETIC = ("silence", "constant", "hum", "wind", "rain", "tones", "clipped_noise", "white", "pink")


def _rng(recipe: dict) -> np.random.Generator:
    return np.random.default_rng(int(recipe.get("seed", 0)))


def _crop(x: np.ndarray, offset: int) -> np.ndarray:
    """N samples from offset; a recording shorter than one window is repeated (as the student pads frames)."""
    if len(x) < N:
        x = np.tile(x, int(np.ceil(N / max(len(x), 1))) + 1)
    offset = int(np.clip(offset, 0, len(x) - N))
    return x[offset:offset + N].astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _colored(rng: np.random.Generator, kind: str, n: int = N) -> np.ndarray:
    w = rng.standard_normal(n)
    if kind == "white":
        return w
    f = np.fft.rfftfreq(n, 1.0 / POOL_RATE)
    spec = np.fft.rfft(w)
    if kind == "pink":
        spec /= np.sqrt(np.maximum(f, 20.0))
    elif kind == "brown":
        spec /= np.maximum(f, 10.0)
    return np.fft.irfft(spec, n)


def synthetic(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(N) / POOL_RATE
    level = 10 ** (rng.uniform(-40, -10) / 20)
    if kind == "silence":
        return np.zeros(N, np.float32)
    if kind == "constant":
        return np.full(N, rng.uniform(-0.5, 0.5), np.float32)
    if kind == "hum":
        f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
        x = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 8))
        x = x + 0.01 * rng.standard_normal(N)
    elif kind == "wind":
        x = _colored(rng, "brown")
        gust = 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 6.3))
        x = x * gust
    elif kind == "rain":
        x = 0.3 * _colored(rng, "pink")
        drops = rng.random(N) < rng.uniform(2e-4, 3e-3)
        x = x + np.convolve(drops * rng.standard_normal(N) * 8, np.exp(-np.arange(64) / 8.0), mode="same")
    elif kind == "tones":
        x = np.zeros(N)
        for _ in range(rng.integers(1, 5)):
            f0, f1 = rng.uniform(300, 9000, 2)
            a, b = sorted(rng.uniform(0, WINDOW_S, 2))
            m = (t >= a) & (t < b)
            ph = 2 * np.pi * np.cumsum(np.linspace(f0, f1, N)) / POOL_RATE
            x = x + m * np.sin(ph)
    elif kind == "clipped_noise":
        x = np.clip(_colored(rng, "pink") * rng.uniform(2, 20), -1, 1)
        return (x / max(np.abs(x).max(), 1e-9) * rng.uniform(0.5, 1.0)).astype(np.float32)
    else:  # white / pink
        x = _colored(rng, kind)
    x = np.asarray(x, np.float64)
    return np.clip(x / _rms(x) * level, -1.0, 1.0).astype(np.float32)


def render(recipe: dict, audio) -> np.ndarray:
    """The recipe's 3 s of audio at POOL_RATE. `audio(key)` returns a recording's samples at POOL_RATE."""
    rng = _rng(recipe)
    if recipe["kind"] == "synthetic":
        return synthetic(recipe["noise"], rng)
    x = _crop(audio(recipe["rec"]), recipe["offset"]).astype(np.float64)
    base = _rms(x)
    if recipe.get("partner"):
        p = _crop(audio(recipe["partner"]), recipe["partner_offset"]).astype(np.float64)
        x = x + p * (base / _rms(p)) * 10 ** (recipe["partner_db"] / 20)
    if recipe.get("background"):
        b = _crop(audio(recipe["background"]), recipe["background_offset"]).astype(np.float64)
        x = x + b * (_rms(x) / _rms(b)) * 10 ** (-recipe["snr_db"] / 20)
    if recipe.get("noise"):
        n = synthetic(recipe["noise"], rng).astype(np.float64)
        if _rms(n) > 1e-9:
            x = x + n * (_rms(x) / _rms(n)) * 10 ** (-recipe["noise_snr_db"] / 20)
    x = x * 10 ** (recipe.get("gain_db", 0.0) / 20)
    peak = np.abs(x).max()
    if recipe.get("clip"):
        x = np.clip(x / max(peak, 1e-9) * recipe["clip"], -1.0, 1.0)
    elif peak > 1.0:
        x = x / peak
    return x.astype(np.float32)


def make_recipes(positives: list[tuple[str, float]], negatives: list[tuple[str, float]], n: int,
                 seed: int = 0, negative_fraction: float = 0.25, synthetic_fraction: float = 0.08) -> list[dict]:
    """n recipes. positives/negatives: (content key, duration s) of the training recordings.

    Mixture (per item): a positive recording's window (uniform offset) with a mixup partner (another
    positive: 35%), a background (a negative recording at 0-20 dB SNR: 40%), added noise (20%),
    clipping (3%), gain -20..+6 dB; or a negative recording's window alone or with noise
    (negative_fraction); or a synthetic negative (synthetic_fraction).
    """
    rng = np.random.default_rng(seed)
    out = []

    def off(dur: float) -> int:
        return int(rng.integers(0, max(1, int((dur - WINDOW_S) * POOL_RATE)) + 1)) if dur > WINDOW_S else 0

    for _ in range(n):
        u = rng.random()
        r: dict = {"seed": int(rng.integers(2**31))}
        if u < synthetic_fraction:
            r.update(kind="synthetic", noise=str(rng.choice(SYNTHETIC)))
        else:
            src = negatives if (negatives and u < synthetic_fraction + negative_fraction) else positives
            key, dur = src[rng.integers(len(src))]
            r.update(kind="mix", rec=key, offset=off(dur), gain_db=round(float(rng.uniform(-20, 6)), 2))
            if src is positives and rng.random() < 0.35:
                k2, d2 = positives[rng.integers(len(positives))]
                r.update(partner=k2, partner_offset=off(d2), partner_db=round(float(rng.uniform(-12, 0)), 2))
            if negatives and rng.random() < 0.4:
                k3, d3 = negatives[rng.integers(len(negatives))]
                r.update(background=k3, background_offset=off(d3), snr_db=round(float(rng.uniform(0, 20)), 2))
            if rng.random() < 0.2:
                r.update(noise=str(rng.choice(["white", "pink", "wind", "rain", "hum"])),
                         noise_snr_db=round(float(rng.uniform(3, 30)), 2))
            if rng.random() < 0.03:
                r.update(clip=round(float(rng.uniform(2, 10)), 2))
        out.append(r)
    return out
