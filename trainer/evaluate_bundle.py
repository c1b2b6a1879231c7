"""Evaluate any signed bundle on any dataset with the int8 interpreter (what the edge runs)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _public_key_path(bundle: Path, given) -> Path:
    if given:
        return Path(given)
    for cand in (bundle.with_suffix(".pub"), bundle.parent / "key" / "signing.pub", bundle.parent / "signing.pub"):
        if cand.is_file():
            return cand
    from edge.contract.bundle import BundleError

    raise BundleError(f"no public key for {bundle}: pass --public-key (looked for {bundle.with_suffix('.pub')})")


def evaluate_bundle(bundle_path, data, out, *, public_key=None, hop_s=None, cache_dir=None, num_threads=2,
                    progress=True) -> dict:
    from edge.contract.bundle import load_bundle
    from edge.contract.interpreter import load_model
    from edge.contract.signing import load_public_key

    from .data import FrameCache, eval_windows, read_dataset
    from .evaluate import compute_metrics
    from .report import write_metrics, write_plots
    from .train import default_cache_dir

    bp = Path(bundle_path)
    bundle = load_bundle(bp, load_public_key(_public_key_path(bp, public_key)))
    model = load_model(bundle, num_threads=num_threads)
    ds = read_dataset(data)
    frames = FrameCache(bundle.frontend, cache_dir or default_cache_dir()).load(ds, progress=progress)
    labels = [lab.label for lab in bundle.labels]
    idx = {c: i for i, c in enumerate(labels)}
    unknown = sorted(set(ds.classes) - set(idx))
    if unknown:
        log.warning("dataset classes the model does not know (their recordings count only as negatives): %s", unknown)
    if bundle.segment is not None and hop_s and abs(hop_s - bundle.hop_s) > 1e-9:
        from edge.contract.bundle import BundleError

        raise BundleError(f"--hop {hop_s}: a segment bundle scores windows at its own hop of {bundle.hop_s} s")
    w = eval_windows(ds, frames, bundle.frontend, hop_s or bundle.hop_s)
    by_id = {r.id: r for r in ds.recordings}
    y_rec = []
    for rid in w.rec_ids:
        v = np.zeros(len(labels), np.float32)
        for lab in by_id[rid].labels:
            if lab in idx:
                v[idx[lab]] = 1
        y_rec.append(v)
    y = np.stack(y_rec)[w.rec_index]
    scores = bundle_scores(bundle, model, frames, w, progress)
    primary = [idx.get(by_id[r].label) for r in w.rec_ids]
    m = compute_metrics(y, scores, w.rec_index, w.rec_ids, primary, labels, thresholds=bundle.thresholds)
    out = Path(out)
    write_metrics(out, m, {"bundle": {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256},
                           "dataset": ds.summary(), "hop_s": hop_s or bundle.hop_s})
    write_plots(out, m, labels, y, scores)
    return m


def bundle_scores(bundle, model, frames: dict, w, progress: bool = False) -> np.ndarray:
    """(n, classes) scores of windows ``w`` (trainer.data.Windows) of recordings' dB frames, as the edge scores
    them: one window per invoke, or for a segment bundle each recording's windows in order, ``windows`` per
    invoke from the first (trainer/segment.py)."""
    from edge.contract.frontend import LogMel

    from .data import window_features

    logmel = LogMel(bundle.frontend)
    n = len(bundle.labels)
    if bundle.segment is not None:
        from .segment import grouped_scores

        return grouped_scores(bundle.segment, model.predict, logmel, frames.__getitem__, w.rec_ids, w.rec_index,
                              w.starts, n)
    it = range(len(w))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="scoring", unit="win", leave=False)
    rows = [model.predict(window_features(logmel, frames[w.rec_ids[w.rec_index[i]]], int(w.starts[i]))) for i in it]
    return np.stack(rows) if rows else np.zeros((0, n), np.float32)
