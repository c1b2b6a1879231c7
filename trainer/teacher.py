"""BirdNET V2.4 as a teacher: its logits and embeddings of every window the student trains on.

Two kinds of teacher windows, both cached on disk keyed by content:

- the grid: every recording (positives and negatives) cut into 3 s windows
  every ``hop_s`` (1 s) -> ``grid/<file sha1>_<hop>.npz``;
- the pool: augmented windows built by ``trainer.pool`` recipes (mixup,
  background, noise, gain, clipping, synthetic negatives) -> ``pool/<sha1 of
  the chunk's recipes>.npz`` (chunks of ``CHUNK`` recipes).

All audio is decoded at the pool rate (32 kHz, the student's), and the teacher
hears that same audio resampled to 48 kHz, so student and teacher see the same
samples. Each entry keeps BirdNET's 6522 logits (float16) and its 1024-d
embedding (float16). Work is spread over processes (one BirdNET each).

BirdNET V2.4 is CC BY-NC-SA 4.0; see docs/training.md for what that means for a
distilled model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pool as poolmod
from .data import save_atomic

log = logging.getLogger(__name__)

CHUNK = 500


def file_key(path: str | Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def default_teacher_cache() -> Path:
    env = os.environ.get("DAWNCHORUS_TEACHER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dawnchorus" / "teacher"


def grid_offsets(n_samples: int, hop_s: float) -> np.ndarray:
    """Window starts (samples at the pool rate): every hop, the last flush with the end."""
    from .data import window_starts

    return window_starts(n_samples, poolmod.N, int(round(hop_s * poolmod.POOL_RATE)))


def birdnet_index(scientific_names: list[str], labels: list[str]) -> np.ndarray:
    """For each class, the index of the BirdNET label with that scientific name, or -1."""
    by_sci = {lab.split("_", 1)[0].strip().lower(): i for i, lab in enumerate(labels)}
    return np.array([by_sci.get(s.strip().lower(), -1) for s in scientific_names], dtype=np.int64)


# --- workers ------------------------------------------------------------------

_W: dict = {}


def _audio(key: str) -> np.ndarray:
    cache = _W.setdefault("audio", {})
    if key not in cache:
        from .data import load_audio

        cache[key] = load_audio(_W["paths"][key], poolmod.POOL_RATE)
    return cache[key]


def _teacher():
    if "bn" not in _W:
        from .birdnet import BirdNET

        _W["bn"] = BirdNET(num_threads=1)
    return _W["bn"]


def _score(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import resample_poly

    bn = _teacher()
    logits, emb = [], []
    for w in windows:
        x = resample_poly(w.astype(np.float64), 3, 2).astype(np.float32)  # 32 kHz -> 48 kHz
        bn._it.set_tensor(bn._in, x[None, : bn.window_samples])
        bn._it.invoke()
        logits.append(bn._it.get_tensor(bn._scores)[0].astype(np.float16))
        emb.append(bn._it.get_tensor(bn._emb)[0].astype(np.float16))
    return np.stack(logits), np.stack(emb)


def _save(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(path, lambda fh: np.savez(fh, **arrays))


def _grid_task(args) -> str:
    key, hop_s, out = args
    x = _audio(key)
    offs = grid_offsets(len(x), hop_s)
    logits, emb = _score([poolmod._crop(x, int(o)) for o in offs])
    _save(Path(out), offsets=offs, logits=logits, emb=emb)
    _W.get("audio", {}).pop(key, None)
    return key


def _pool_task(args) -> str:
    recipes, out = args
    logits, emb = _score([poolmod.render(r, _audio) for r in recipes])
    _save(Path(out), logits=logits, emb=emb)
    return out


def _init(paths: dict[str, str]) -> None:
    _W.clear()
    _W["paths"] = paths
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run(tasks: list, fn, paths: dict[str, str], workers: int, desc: str, progress: bool) -> None:
    if not tasks:
        return
    it_progress = None
    if progress:
        from tqdm import tqdm

        it_progress = tqdm(total=len(tasks), desc=desc, unit="task", leave=False)
    if workers <= 1:
        _init(paths)
        for t in tasks:
            fn(t)
            if it_progress:
                it_progress.update()
    else:
        import multiprocessing as mp

        # spawn, not fork: the trainer has TensorFlow loaded, and forking a process with its threads running
        # can deadlock the children; workers only need numpy, scipy and LiteRT.
        with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(paths,)) as p:
            for _ in p.imap_unordered(fn, tasks):
                if it_progress:
                    it_progress.update()
    if it_progress:
        it_progress.close()


# --- tables -------------------------------------------------------------------

@dataclass
class GridTable:
    keys: list[str]  # per window: recording content key
    offsets: np.ndarray  # per window: start sample at the pool rate
    logits: np.ndarray  # (n, 6522) float16
    emb: np.ndarray  # (n, 1024) float16


@dataclass
class PoolTable:
    recipes: list[dict]
    logits: np.ndarray
    emb: np.ndarray


def grid_table(paths: dict[str, str], cache_dir: Path, hop_s: float = 1.0, workers: int = 1,
               progress: bool = True) -> GridTable:
    """Teacher outputs on the 1 s grid of every recording in `paths` (content key -> file path)."""
    gdir = Path(cache_dir) / "grid"
    out = {k: gdir / f"{k}_{hop_s:g}.npz" for k in paths}
    todo = [(k, hop_s, str(p)) for k, p in out.items() if not p.exists()]
    if todo and os.environ.get("DAWNCHORUS_TEACHER_CACHED_ONLY"):  # iterations while the cache fills
        log.warning("teacher grid: %d recording(s) not cached yet, left out", len(todo))
        todo = []
    _run(todo, _grid_task, paths, workers, "teacher grid", progress)
    keys, offs, lg, em = [], [], [], []
    for k in paths:
        if not out[k].exists():
            continue
        z = np.load(out[k])
        keys.extend([k] * len(z["offsets"]))
        offs.append(z["offsets"])
        lg.append(z["logits"])
        em.append(z["emb"])
    return GridTable(keys, np.concatenate(offs), np.concatenate(lg), np.concatenate(em))


def pool_table(recipes: list[dict], paths: dict[str, str], cache_dir: Path, workers: int = 1,
               progress: bool = True) -> PoolTable:
    pdir = Path(cache_dir) / "pool"
    chunks = [recipes[i:i + CHUNK] for i in range(0, len(recipes), CHUNK)]
    files = [pdir / (hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:24] + ".npz") for c in chunks]
    todo = [(c, str(f)) for c, f in zip(chunks, files) if not f.exists()]
    _run(todo, _pool_task, paths, workers, "teacher pool", progress)
    zs = [np.load(f) for f in files]
    return PoolTable(recipes, np.concatenate([z["logits"] for z in zs]), np.concatenate([z["emb"] for z in zs]))


def _window_task(args) -> str:
    items, out = args
    logits, emb = _score([poolmod._crop(_audio(k), int(o)) for k, o in items])
    _save(Path(out), logits=logits, emb=emb)
    return out


def window_table(items: list[tuple[str, int]], paths: dict[str, str], cache_dir: Path, workers: int = 1,
                 progress: bool = True) -> PoolTable:
    """Teacher outputs of arbitrary windows (content key, start sample at the pool rate), cached per chunk."""
    wdir = Path(cache_dir) / "windows"
    items = [(k, int(o)) for k, o in items]
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    files = [wdir / (hashlib.sha1(json.dumps(c).encode()).hexdigest()[:24] + ".npz") for c in chunks]
    todo = [(c, str(f)) for c, f in zip(chunks, files) if not f.exists()]
    _run(todo, _window_task, paths, workers, "teacher windows", progress)
    zs = [np.load(f) for f in files]
    if not zs:
        return PoolTable([], np.zeros((0, 6522), np.float16), np.zeros((0, 1024), np.float16))
    return PoolTable([], np.concatenate([z["logits"] for z in zs]), np.concatenate([z["emb"] for z in zs]))
