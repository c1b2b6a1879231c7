"""Negative (open-set) audio: other birds and places, split by recordist.

Any dataset in either layout can serve as negatives: its own classes are not
classes of the model; its ``secondary_labels`` that name a model class make
that class a positive of the recording (the teacher hears them too). A fixed
part of each negative set, grouped by recordist, is held out for evaluation
(false events per hour, threshold tuning) and never trained on.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import Dataset, Recording

log = logging.getLogger(__name__)


@dataclass
class NegativeSet:
    train: list[Recording]
    held_out: list[Recording]


def _read_any(p: Path) -> Dataset:
    """Either layout; unlike read_dataset, one class (or none of interest) is fine for negatives."""
    from .data import DatasetError, read_csv_layout, read_folder_layout

    if p.is_file() and p.suffix.lower() == ".csv":
        return read_csv_layout(p)
    if p.is_dir() and (p / "metadata.csv").is_file():
        return read_csv_layout(p / "metadata.csv")
    if p.is_dir():
        return read_folder_layout(p)
    raise DatasetError(f"{p}: not a dataset folder or metadata.csv")


def _order(group: str, salt: str) -> int:
    return int(hashlib.sha1(f"{salt}|{group}".encode()).hexdigest()[:8], 16)


def _raw_secondary(ds: Dataset) -> dict[str, list[str]]:
    """Secondary labels as written in metadata.csv (read_dataset keeps only the set's own classes)."""
    import csv

    from .data import _parse_list

    if ds.layout != "metadata.csv":
        return {}
    with (Path(ds.root) / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        return {(r.get("filename") or "").strip(): _parse_list(r.get("secondary_labels", ""))
                for r in csv.DictReader(fh)}


def _duration(path: Path) -> float:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # noqa: BLE001 - unreadable files are dropped later by the frame cache
        return 0.0


def read_negatives(paths: Sequence[str | Path], classes: list[str], held_out_fraction: float = 0.25,
                   salt: str = "negatives") -> NegativeSet:
    """Recordings of the negative sets, their labels restricted to `classes` (secondary labels only).

    Per set, whole recordists (in a fixed pseudo-random order) are held out until they hold
    `held_out_fraction` of the set's audio duration."""
    want = set(classes)
    train, held = [], []
    for p in paths:
        try:
            ds = _read_any(Path(p))
        except Exception as exc:  # noqa: BLE001 - a missing negative set is skipped, loudly
            log.warning("negatives %s not used: %s", p, exc)
            continue
        raw = _raw_secondary(ds)
        groups: dict[str, list[Recording]] = {}
        for r in ds.recordings:
            sec = tuple(s for s in [r.label, *r.secondary, *raw.get(r.id, [])] if s in want)
            rec = Recording(id=f"neg:{Path(p).name}/{r.id}", path=r.path, label="", secondary=tuple(dict.fromkeys(sec)),
                            recordist=r.recordist, license=r.license, url=r.url)
            groups.setdefault(r.recordist or r.id, []).append(rec)
        dur = {g: sum(_duration(r.path) for r in rs) for g, rs in groups.items()}
        target, acc = held_out_fraction * sum(dur.values()), 0.0
        for g in sorted(groups, key=lambda g: _order(g, salt)):
            if acc < target and acc + dur[g] <= 1.5 * target + 1e-9:
                held.extend(groups[g])
                acc += dur[g]
            else:
                train.extend(groups[g])
    log.info("negatives: %d training and %d held-out recordings from %d set(s)", len(train), len(held), len(paths))
    return NegativeSet(train, held)


def targets(rec: Recording, classes: list[str]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(classes)}
    y = np.zeros(len(classes), np.float32)
    for lab in rec.labels:
        if lab in idx:
            y[idx[lab]] = 1.0
    return y


def with_negatives(ds: Dataset, negs: list[Recording]) -> Dataset:
    """The dataset plus negative recordings (label '' : no class) for frame caching."""
    return Dataset(ds.root, ds.layout, list(ds.recordings) + list(negs), ds.classes, ds.names, list(ds.skipped))
