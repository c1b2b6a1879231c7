"""Trainer: dataset readers on both layouts and broken files, splits, config, and a tiny real run."""
from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest

from edge.contract.bundle import load_bundle
from edge.contract.frontend import FrontendParams, LogMel
from edge.contract.interpreter import load_model
from edge.contract.signing import load_public_key
from trainer.config import TrainConfigError, load_train_config, parse_train_config
from trainer.data import (DatasetError, FrameCache, grouped_folds, grouped_split, load_audio,
                          read_dataset, window_features)

LABELS = ["Corvus_corax", "Fringilla_coelebs", "Parus_major"]


def _copy(train_data, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(train_data, dst)
    return dst


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_csv_layout(train_data):
    ds = read_dataset(train_data)
    assert ds.layout == "metadata.csv" and ds.classes == LABELS
    assert len(ds.recordings) == 9 and all(r.recordist for r in ds.recordings)
    assert ds.names["Parus_major"] == ("Parus major", "Great Tit")
    assert read_dataset(train_data / "metadata.csv").classes == LABELS


def test_folder_layout(train_data, tmp_path):
    ds = read_dataset(train_data / "audio")
    assert ds.layout == "folders" and ds.classes == LABELS and len(ds.recordings) == 9
    assert {r.path.suffix for r in ds.recordings} == {".mp3", ".ogg", ".flac", ".wav"}
    # BirdNET-Analyzer folder names: "Scientific name_Common name"
    root = tmp_path / "birdnet"
    for lab, common in (("Parus major", "Great Tit"), ("Corvus corax", "Northern Raven")):
        src = train_data / "audio" / lab.replace(" ", "_")
        shutil.copytree(src, root / f"{lab}_{common}")
    ds2 = read_dataset(root)
    assert ds2.classes == ["Corvus_corax", "Parus_major"]
    assert ds2.names["Parus_major"] == ("Parus major", "Great Tit")


def test_empty_class_folder_is_refused(train_data, tmp_path):
    root = tmp_path / "folders"
    shutil.copytree(train_data / "audio", root)
    (root / "Turdus_merula").mkdir()
    (root / "Turdus_merula" / "notes.txt").write_text("no audio")
    with pytest.raises(DatasetError, match="empty class folder.*Turdus_merula"):
        read_dataset(root)


def test_secondary_labels_and_unknown_ones(train_data, tmp_path, caplog):
    root = _copy(train_data, tmp_path)
    rows = _rows(root / "metadata.csv")
    rows[0]["secondary_labels"] = "['Parus_major', 'Strix_aluco']"  # Python-style list, as in BirdCLEF
    rows[1]["secondary_labels"] = '["Fringilla_coelebs"]'
    _write_rows(root / "metadata.csv", rows)
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root)
    assert "Strix_aluco" in caplog.text
    r0 = next(r for r in ds.recordings if r.id == rows[0]["filename"])
    assert r0.secondary == ("Parus_major",)
    assert ds.targets(r0).tolist() == [1.0, 0.0, 1.0]


def test_broken_and_missing_files_are_listed_and_skipped(train_data, tmp_path, caplog):
    root = _copy(train_data, tmp_path)
    (root / "audio/Parus_major/XC000001.mp3").write_bytes(b"ID3 this is not audio" * 10)
    good = (root / "audio/Corvus_corax/XC570428.wav").read_bytes()
    (root / "audio/Corvus_corax/XC000002.wav").write_bytes(good[:30])  # truncated header
    rows = _rows(root / "metadata.csv")
    extra = [dict(rows[0], filename="audio/Parus_major/XC000001.mp3", primary_label="Parus_major"),
             dict(rows[0], filename="audio/Corvus_corax/XC000002.wav"),
             dict(rows[0], filename="audio/Corvus_corax/missing.ogg")]
    _write_rows(root / "metadata.csv", rows + extra)
    ds = read_dataset(root)
    assert ("audio/Corvus_corax/missing.ogg", "file not found") in ds.skipped
    with caplog.at_level(logging.WARNING):
        frames = FrameCache(FrontendParams(), tmp_path / "cache").load(ds)
    bad = {f for f, _ in ds.skipped}
    assert {"audio/Parus_major/XC000001.mp3", "audio/Corvus_corax/XC000002.wav"} <= bad
    assert len(ds.skipped) == 3 and len(ds.recordings) == 9 and set(frames) == {r.id for r in ds.recordings}
    assert "3 unreadable file(s)" not in caplog.text and "2 unreadable file(s) skipped" in caplog.text


def test_class_left_without_readable_audio_is_refused(train_data, tmp_path):
    root = tmp_path / "folders"
    shutil.copytree(train_data / "audio", root)
    for f in (root / "Parus_major").iterdir():
        f.write_bytes(b"garbage")
    ds = read_dataset(root)
    with pytest.raises(DatasetError, match="no readable recording.*Parus_major"):
        FrameCache(FrontendParams()).load(ds)


def test_csv_missing_columns_and_empty_class(train_data, tmp_path):
    root = _copy(train_data, tmp_path)
    rows = _rows(root / "metadata.csv")
    _write_rows(root / "metadata.csv", [{k: v for k, v in r.items() if k != "primary_label"} for r in rows])
    with pytest.raises(DatasetError, match="missing column.*primary_label"):
        read_dataset(root)
    rows[0]["filename"] = "audio/Corvus_corax/gone.mp3"
    rows[1]["filename"] = "audio/Corvus_corax/gone2.mp3"
    rows[2]["filename"] = "audio/Corvus_corax/gone3.mp3"
    _write_rows(root / "metadata.csv", rows)
    with pytest.raises(DatasetError, match="no readable recording.*Corvus_corax"):
        read_dataset(root)


def test_load_audio_mono_resampled(train_data):
    x = load_audio(train_data / "audio/Corvus_corax/XC570428.wav", 32000)  # 22.05 kHz source
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 3.5 * 32000) <= 2
    with pytest.raises(DatasetError, match="cannot decode"):
        load_audio(train_data / "metadata.csv", 32000)


def test_feature_cache_is_used(train_data, tmp_path):
    ds = read_dataset(train_data)
    cache = FrameCache(FrontendParams(), tmp_path / "cache")
    first = cache.load(ds)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 9
    again = FrameCache(FrontendParams(), tmp_path / "cache").load(ds)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    other = FrameCache(FrontendParams(n_mels=64), tmp_path / "cache").load(ds)
    assert next(iter(other.values())).shape[1] == 64


def _primary(ds, ids):
    return {next(r.label for r in ds.recordings if r.id == i) for i in ids}


def test_grouped_split_keeps_recordists_apart(train_data):
    ds = read_dataset(train_data)
    train, val = grouped_split(ds, 0.34, seed=1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 9
    assert _primary(ds, train) == _primary(ds, val) == set(LABELS)
    who = {r.id: (r.label, r.recordist) for r in ds.recordings}
    assert {who[i] for i in train}.isdisjoint({who[i] for i in val})


def test_folds_partition_the_recordings(train_data):
    ds = read_dataset(train_data)
    folds = grouped_folds(ds, 3, seed=0)
    ids = [i for f in folds for i in f]
    assert sorted(ids) == sorted(r.id for r in ds.recordings)
    assert all(_primary(ds, f) == set(LABELS) for f in folds)


def test_class_with_one_recording_cannot_be_split(train_data, tmp_path):
    root = _copy(train_data, tmp_path)
    rows = _rows(root / "metadata.csv")
    rows = [r for r in rows if not (r["primary_label"] == "Parus_major" and "303312" not in r["url"])]
    _write_rows(root / "metadata.csv", rows)
    with pytest.raises(DatasetError, match="Parus_major has 1 recording"):
        grouped_split(read_dataset(root), 0.3)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(TrainConfigError, match="train.epochs"):
        parse_train_config({"train": {"epochs": 0}})
    with pytest.raises(TrainConfigError, match="model.alpah: unknown option"):
        parse_train_config({"model": {"alpah": 0.5}})
    with pytest.raises(TrainConfigError, match="model.mode"):
        parse_train_config({"model": {"mode": "thaw"}})
    bad = tmp_path / "t.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        load_train_config(bad)
    assert load_train_config(None).model.bn_momentum == 0.9


# --- the tiny real run ----------------------------------------------------------

def test_tiny_run_writes_a_bundle_the_edge_verifies_and_runs(tiny_run, train_data):
    pub = load_public_key(tiny_run.public_key_path)
    b = load_bundle(tiny_run.bundle_path, pub)
    model = load_model(b, num_threads=1)  # also runs the self-test vector
    assert b.manifest["training"]["n_train_recordings"] + b.manifest["training"]["n_val_recordings"] == 9
    assert b.manifest["tensors"]["output_kind"] == "logit"  # the edge applies the sigmoid
    assert b.manifest["metrics"]["n_recordings"] == 3
    # the edge's scores on a window equal the trainer's int8 evaluation of that window
    res = tiny_run.result
    p = res.prepared
    w = p.val_windows
    lm = LogMel(b.frontend)
    for i in range(len(w)):
        x = window_features(lm, p.frames[w.rec_ids[w.rec_index[i]]], int(w.starts[i]))
        np.testing.assert_allclose(model.predict(x), res.int8_scores[i], atol=1e-6)


def test_tiny_run_report(tiny_run):
    m = json.loads((tiny_run.out / "metrics.json").read_text())
    for k in ("macro_roc_auc", "macro_average_precision", "cmap_padded", "recording_top1_accuracy",
              "n_windows", "n_recordings"):
        assert k in m
    assert m["n_recordings"] == 3 and m["n_windows"] == len(tiny_run.result.prepared.val_windows)
    assert [r["label"] for r in m["per_class"]] == LABELS
    row = m["per_class"][0]
    for k in ("support_windows", "roc_auc", "average_precision", "precision_at_0.5", "recall_at_0.5", "f1_at_0.5",
              "threshold", "f1_at_threshold"):
        assert k in row
    assert "float" in m and "int8_drop" in m
    preds = (tiny_run.out / "predictions.csv").read_text().splitlines()
    assert len(preds) == 1 + 3
    for png in ("training_curves.png", "confusion_matrix.png", "pr_curves.png"):
        assert (tiny_run.out / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_command_on_any_dataset(tiny_run, train_data, tmp_path, capsys):
    from trainer.cli import main

    out = tmp_path / "eval"
    rc = main(["evaluate", "--bundle", str(tiny_run.bundle_path), "--data", str(train_data / "audio"),
               "--out", str(out), "--public-key", str(tiny_run.public_key_path), "--cache-dir",
               str(tiny_run.cache_dir), "-q"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_recordings"] == 9 and m["bundle"]["sha256"] == load_bundle(
        tiny_run.bundle_path, load_public_key(tiny_run.public_key_path)).sha256
    assert 0.0 <= m["recording_top1_accuracy"] <= 1.0
    # a wrong key is refused with the reason, and nothing is written
    from edge.contract.signing import generate_keypair

    _, other = generate_keypair(tmp_path / "other")
    rc = main(["evaluate", "--bundle", str(tiny_run.bundle_path), "--data", str(train_data),
               "--out", str(tmp_path / "eval2"), "--public-key", str(other), "-q"])
    assert rc == 2 and "does not verify" in capsys.readouterr().err
    assert not (tmp_path / "eval2" / "metrics.json").exists()


def test_keygen_command(tmp_path, capsys):
    from trainer.cli import main

    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "signing.key").stat().st_mode & 0o077 == 0
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_train_command_refuses_bad_config(train_data, tmp_path, capsys):
    from trainer.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  weights: /nonexistent.weights.h5\n  alpha: 0.35\n")
    rc = main(["train", "--data", str(train_data), "--out", str(tmp_path / "o"), "--config", str(cfg),
               "--cache-dir", str(tmp_path / "c"), "-q"])
    assert rc == 2 and "nonexistent.weights.h5 is not a file" in capsys.readouterr().err


def test_example_config_documents_the_defaults():
    from pathlib import Path

    from trainer.config import TrainConfig

    example = Path(__file__).parent.parent / "trainer.example.yaml"
    assert load_train_config(example) == TrainConfig()


def test_distilled_tiny_run_names_its_teacher(train_data, tmp_path):
    """Optional BirdNET teacher (soft window labels): the bundle says it was distilled."""
    pytest.importorskip("tensorflow")
    from fixtures_trainer import require_birdnet

    require_birdnet()
    from fixtures_trainer import TINY_CONFIG
    from trainer.train import run

    from edge.contract.signing import generate_keypair, load_private_key

    cfg = parse_train_config({**TINY_CONFIG, "distill": {"teacher": "birdnet", "target": "scores", "hop_s": 0.5}})
    cfg.data.cache_dir = tmp_path / "cache"
    priv, pub = generate_keypair(tmp_path / "keys")
    res = run(train_data, tmp_path / "out", cfg, private_key=load_private_key(priv), progress=False, write_plots=False)
    t = res.prepared.teacher
    assert t.emb.shape[1] == 1024 and t.soft.shape == (len(t.emb), 3)
    assert np.all((t.soft >= 0) & (t.soft <= 1))
    b = load_bundle(res.bundle_path, load_public_key(pub))
    assert "BirdNET V2.4" in b.manifest["training"]["teacher"]
    load_model(b)


def test_avgmax_pooling_keeps_the_loudest_column():
    """model.pooling avgmax: the pooled vector is the time-mean and the time-max of the frequency-mean."""
    import keras

    from trainer.config import ModelSection
    from trainer.model import build_model

    parts = build_model(ModelSection(pooling="avgmax", weights="none", mode="scratch"), (32, 96, 1), 3)
    x = np.random.default_rng(0).standard_normal((2, 32, 96, 1)).astype(np.float32)
    fmap = keras.Model(parts.embedder.input, parts.embedder.get_layer("pool_freq").input)(x).numpy()
    fm = fmap.mean(axis=1)  # (batch, time, channels)
    got = parts.embedder(x).numpy()
    assert got.shape == (2, 2 * fmap.shape[-1])
    np.testing.assert_allclose(got, np.concatenate([fm.mean(axis=1), fm.max(axis=1)], axis=1), rtol=1e-4, atol=1e-5)
