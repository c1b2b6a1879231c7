"""Datasets: both layouts, decoding, cached log-mel frames, windows, grouped splits.

Layouts
- folder-per-class (BirdNET-Analyzer style): ``<root>/<label>/<file>``. A folder
  named ``Scientific name_Common name`` gives both names; otherwise the folder
  name is the label (``Genus_species``).
- BirdCLEF style: ``metadata.csv`` with ``primary_label``, ``secondary_labels``
  (a JSON or Python list), ``filename`` (relative to the CSV) and optionally
  ``recordist``, ``latitude``, ``longitude``, ``scientific_name``, ``common_name``.
  A directory holding ``metadata.csv`` is read as this layout.

Audio (wav, flac, ogg, mp3 through soundfile) is mixed to mono and resampled
to the front-end rate. What the model sees is cached as log-mel dB frames per
recording (float16 .npy), so a second run does not decode again; windows are
slices of those frames, exactly as the edge frames a stream.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.contract.frontend import FrontendParams, LogMel

log = logging.getLogger(__name__)


def save_atomic(path: Path, save) -> None:
    """``save(file object)`` into a temporary file of its own beside ``path``, renamed over it when whole: two
    training runs sharing a cache (or a crash) never leave half a file or take each other's temporary name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Recording:
    id: str  # path relative to the dataset root
    path: Path
    label: str
    secondary: tuple[str, ...] = ()
    recordist: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    license: str | None = None
    url: str | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return (self.label, *self.secondary)


@dataclass
class Dataset:
    root: Path
    layout: str
    recordings: list[Recording]
    classes: list[str]
    names: dict[str, tuple[str, str]]  # label -> (scientific name, common name)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def targets(self, rec: Recording) -> np.ndarray:
        """Multi-hot label vector: primary and secondary labels are positives."""
        y = np.zeros(len(self.classes), np.float32)
        idx = self.index()
        for lab in rec.labels:
            if lab in idx:
                y[idx[lab]] = 1.0
        return y

    def subset(self, ids) -> "Dataset":
        keep = set(ids)
        return Dataset(self.root, self.layout, [r for r in self.recordings if r.id in keep], self.classes,
                       self.names, list(self.skipped))

    def summary(self) -> dict:
        counts = Counter(r.label for r in self.recordings)
        return {"root": str(self.root), "layout": self.layout, "n_recordings": len(self.recordings),
                "n_classes": len(self.classes), "recordings_per_class": {c: counts.get(c, 0) for c in self.classes},
                "n_skipped": len(self.skipped)}


def _parse_list(text: str) -> list[str]:
    text = (text or "").strip()
    if not text:
        return []
    try:
        val = json.loads(text)
    except json.JSONDecodeError:
        try:
            val = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            val = [t.strip() for t in text.strip("[]").split(",")]
    if isinstance(val, str):
        val = [val]
    return [str(v).strip().strip("'\"") for v in val if str(v).strip()]


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _names_from_folder(name: str) -> tuple[str, str, str]:
    """(label, scientific name, common name) from a class folder name."""
    if "_" in name and " " in name.split("_", 1)[0]:
        sci, common = name.split("_", 1)
        return sci.strip().replace(" ", "_"), sci.strip(), common.strip()
    return name, name.replace("_", " "), ""


def read_folder_layout(root: Path) -> Dataset:
    recs: list[Recording] = []
    names: dict[str, tuple[str, str]] = {}
    empty: list[str] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders (expected <label>/<audio file>) and no metadata.csv")
    for d in class_dirs:
        label, sci, common = _names_from_folder(d.name)
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            empty.append(d.name)
            continue
        names[label] = (sci, common)
        recs.extend(Recording(id=str(f.relative_to(root)), path=f, label=label) for f in files)
    if empty:
        raise DatasetError(f"{root}: empty class folder(s) with no {'/'.join(AUDIO_EXTENSIONS)} files: {empty}")
    return Dataset(root, "folders", recs, sorted(names), names)


def read_csv_layout(csv_path: Path) -> Dataset:
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {csv_path}: {exc}") from exc
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    missing = [c for c in ("primary_label", "filename") if c not in rows[0]]
    if missing:
        raise DatasetError(f"{csv_path}: missing column(s) {missing} (need primary_label, filename)")
    names: dict[str, tuple[str, str]] = {}
    for r in rows:
        lab = (r["primary_label"] or "").strip()
        if lab and lab not in names:
            names[lab] = ((r.get("scientific_name") or lab.replace("_", " ")).strip(), (r.get("common_name") or "").strip())
    recs: list[Recording] = []
    skipped: list = []
    unknown: Counter[str] = Counter()
    for i, r in enumerate(rows, start=2):
        lab = (r["primary_label"] or "").strip()
        fname = (r["filename"] or "").strip()
        if not lab or not fname:
            skipped.append((f"{csv_path.name}:{i}", "empty primary_label or filename"))
            continue
        path = root / fname
        if not path.is_file():
            skipped.append((fname, "file not found"))
            continue
        secondary = []
        for s in _parse_list(r.get("secondary_labels", "")):
            if s in names and s != lab:
                secondary.append(s)
            elif s not in names:
                unknown[s] += 1
        recs.append(Recording(id=fname, path=path, label=lab, secondary=tuple(secondary),
                              recordist=(r.get("recordist") or "").strip() or None,
                              latitude=_float(r.get("latitude")), longitude=_float(r.get("longitude")),
                              license=r.get("license") or None, url=r.get("url") or None))
    if unknown:
        log.warning("ignored %d secondary label(s) that are not classes of this dataset: %s",
                    sum(unknown.values()), ", ".join(sorted(unknown)))
    present = {r.label for r in recs}
    empty = sorted(set(names) - present)
    if empty:
        raise DatasetError(f"{csv_path}: class(es) with no readable recording: {empty}")
    return Dataset(root, "metadata.csv", recs, sorted(names), names, skipped)


def read_dataset(path: str | Path) -> Dataset:
    """Read either layout from a folder (or a metadata.csv path)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".csv":
        ds = read_csv_layout(p)
    elif p.is_dir() and (p / "metadata.csv").is_file():
        ds = read_csv_layout(p / "metadata.csv")
    elif p.is_dir():
        ds = read_folder_layout(p)
    else:
        raise DatasetError(f"{p}: not a dataset folder or metadata.csv")
    if len(ds.classes) < 2:
        raise DatasetError(f"{p}: need at least 2 classes, found {ds.classes}")
    for f, why in ds.skipped:
        log.warning("skipped %s: %s", f, why)
    log.info("dataset %s (%s): %d recordings, %d classes, %d skipped", p, ds.layout, len(ds.recordings),
             len(ds.classes), len(ds.skipped))
    return ds


# --- decoding -----------------------------------------------------------------

def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode, mix to mono, resample to sample_rate; float32. Raises DatasetError if unreadable."""
    import soundfile as sf

    from edge.contract.resample import resample

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise DatasetError(f"{path}: cannot decode ({exc})") from exc
    if data.size == 0:
        raise DatasetError(f"{path}: no samples")
    x = data.mean(axis=1)
    if sr != sample_rate:  # the edge's resampler (libsoxr), so trainer and edge compute the same features
        x = resample(x, sr, sample_rate)
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{path}: non-finite samples")
    return np.ascontiguousarray(x, dtype=np.float32)


class FrameCache:
    """Log-mel dB frames per recording, decoded once and cached on disk as float16."""

    def __init__(self, frontend: FrontendParams, cache_dir: str | Path | None = None):
        self.frontend = frontend
        self.logmel = LogMel(frontend)
        self.dir = Path(cache_dir) if cache_dir else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._fp = hashlib.sha1(json.dumps(frontend.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def _key(self, path: Path) -> str:
        st = path.stat()
        return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self._fp}".encode()).hexdigest()

    def frames(self, path: Path) -> np.ndarray:
        cached = self.dir / f"{self._key(path)}.npy" if self.dir else None
        if cached and cached.exists():
            try:
                return np.load(cached)
            except (ValueError, OSError):
                log.warning("cache file %s unreadable; decoding again", cached)
        x = load_audio(path, self.frontend.sample_rate)
        f = self.logmel.frames(x).astype(np.float16)
        if len(f) == 0:
            raise DatasetError(f"{path}: shorter than one FFT frame")
        if cached:
            save_atomic(cached, lambda fh: np.save(fh, f))
        return f

    def load(self, ds: Dataset, progress: bool = False) -> dict[str, np.ndarray]:
        """Frames of every recording; unreadable files are listed in ds.skipped and dropped."""
        out, bad = {}, []
        it = ds.recordings
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="features", unit="rec", leave=False)
        for rec in it:
            try:
                out[rec.id] = self.frames(rec.path)
            except (DatasetError, OSError) as exc:
                bad.append((rec.id, str(exc)))
        if bad:
            for _, why in bad:
                log.warning("unreadable, skipped: %s", why)
            ds.skipped.extend(bad)
            ds.recordings = [r for r in ds.recordings if r.id in out]
            log.warning("%d unreadable file(s) skipped (%d recordings left)", len(bad), len(ds.recordings))
            empty = sorted(set(ds.classes) - {r.label for r in ds.recordings})
            if empty:
                raise DatasetError(f"class(es) left with no readable recording: {empty}")
        return out


# --- windows ------------------------------------------------------------------

def pad_frames(frames: np.ndarray, n_frames: int) -> np.ndarray:
    """A recording shorter than one window is repeated to fill it."""
    if len(frames) >= n_frames:
        return frames
    reps = int(np.ceil(n_frames / len(frames)))
    return np.tile(frames, (reps, 1))[:n_frames]


def window_starts(n_total: int, n_frames: int, hop_frames: int) -> np.ndarray:
    """Start frames of evaluation windows: every hop, the last one flush with the end."""
    if n_total <= n_frames:
        return np.array([0])
    starts = list(range(0, n_total - n_frames + 1, hop_frames))
    if n_total - n_frames - starts[-1] > hop_frames // 2:
        starts.append(n_total - n_frames)
    return np.array(starts)


def frame_energy(frames: np.ndarray) -> np.ndarray:
    """Per-frame loudness above each band's median (dB), averaged over the bands."""
    f = frames.astype(np.float32)
    return (f - np.median(f, axis=0, keepdims=True)).clip(min=0).mean(axis=1)


def active_starts(frames: np.ndarray, n_frames: int, percentile: float) -> np.ndarray:
    """Window starts (every frame) whose window energy is above the recording's percentile."""
    f = pad_frames(frames, n_frames)
    e = frame_energy(f)
    csum = np.concatenate([[0.0], np.cumsum(e)])
    win = (csum[n_frames:] - csum[:-n_frames]) / n_frames
    if percentile <= 0 or len(win) < 4:
        return np.arange(len(win))
    return np.flatnonzero(win >= np.percentile(win, percentile))


@dataclass
class Windows:
    """Evaluation windows: features are computed from frames on demand."""
    rec_ids: list[str]
    starts: np.ndarray  # (n,) start frame
    rec_index: np.ndarray  # (n,) index into rec_ids
    y: np.ndarray  # (n, n_classes)

    def __len__(self) -> int:
        return len(self.starts)


def eval_windows(ds: Dataset, frames: dict[str, np.ndarray], frontend: FrontendParams, hop_s: float) -> Windows:
    nf = frontend.n_frames
    hop_f = max(1, int(round(hop_s * frontend.sample_rate / frontend.hop_length)))
    ids, starts, idx, ys = [], [], [], []
    for rec in ds.recordings:
        s = window_starts(len(frames[rec.id]), nf, hop_f)
        ids.append(rec.id)
        starts.append(s)
        idx.append(np.full(len(s), len(ids) - 1))
        ys.append(np.repeat(ds.targets(rec)[None], len(s), axis=0))
    return Windows(ids, np.concatenate(starts), np.concatenate(idx), np.concatenate(ys))


def window_features(logmel: LogMel, frames: np.ndarray, start: int) -> np.ndarray:
    nf = logmel.params.n_frames
    f = pad_frames(frames, nf)
    return logmel.features(f[start:start + nf].astype(np.float32))


def features_batch(logmel: LogMel, frames: dict[str, np.ndarray], w: Windows, sel=None) -> np.ndarray:
    sel = np.arange(len(w)) if sel is None else sel
    return np.stack([window_features(logmel, frames[w.rec_ids[w.rec_index[i]]], int(w.starts[i])) for i in sel])


# --- splits -------------------------------------------------------------------

def _groups(ds: Dataset) -> dict[str, dict[str, list[str]]]:
    """label -> group -> recording ids. A group is a recordist within a species
    (falls back to the recording when the recordist is unknown, or when the
    species has a single recordist, with a warning)."""
    by_label: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in ds.recordings:
        by_label[r.label][r.recordist or f"rec:{r.id}"].append(r.id)
    for lab, groups in by_label.items():
        n = sum(len(v) for v in groups.values())
        if n < 2:
            raise DatasetError(f"class {lab} has {n} recording(s): at least 2 are needed to split")
        if len(groups) < 2:
            log.warning("class %s: all %d recordings are by one recordist; split by recording instead", lab, n)
            by_label[lab] = {f"rec:{i}": [i] for ids in groups.values() for i in ids}
    return by_label


def grouped_folds(ds: Dataset, k: int, seed: int = 0) -> list[list[str]]:
    """k disjoint validation sets, grouped by recordist within species, stratified by species."""
    if k < 2:
        raise DatasetError("k folds need k >= 2")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    for lab in sorted(ds.classes):
        groups = list(_groups(ds)[lab].values())
        if len(groups) < k:
            log.warning("class %s has %d group(s) for %d folds: some folds lack it", lab, len(groups), k)
        order = rng.permutation(len(groups))
        groups = sorted((groups[i] for i in order), key=len, reverse=True)
        load = np.zeros(k)
        for g in groups:
            j = int(np.argmin(load + rng.random(k) * 1e-3))
            folds[j].extend(g)
            load[j] += len(g)
    return folds


def grouped_split(ds: Dataset, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): per species, whole recordist groups go to validation
    until about val_fraction of its recordings; each species keeps at least one group on each side."""
    rng = np.random.default_rng(seed)
    train: list = []
    val: list = []
    for _lab, groups in sorted(_groups(ds).items()):
        gl = [groups[g] for g in sorted(groups)]
        n = sum(len(g) for g in gl)
        target = val_fraction * n
        chosen: list[int] = []
        count = 0
        for i in rng.permutation(len(gl)):
            if len(chosen) == len(gl) - 1:
                break
            if not chosen or abs(count + len(gl[i]) - target) < abs(count - target):
                chosen.append(int(i))
                count += len(gl[i])
        for i, g in enumerate(gl):
            (val if i in chosen else train).extend(g)
    return train, val
