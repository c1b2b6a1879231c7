"""Segment inference from the trainer: the segment model rebuilt from a trained per-window model, its int8
conversion, and the bundle the edge loads (edge/contract/segment.py is the contract)."""
from __future__ import annotations

import numpy as np
import pytest

from edge.contract.bundle import load_bundle
from edge.contract.interpreter import Int8Model, load_model
from edge.contract.segment import SegmentSpec, hop_frames_of, score_windows
from edge.contract.signing import load_public_key
from fixtures_trainer import TINY_CONFIG

pytest.importorskip("tensorflow")


def _spec(tiny_run, windows):
    p = tiny_run.result.prepared.logmel.params
    return SegmentSpec(windows=windows, hop_frames=hop_frames_of(TINY_CONFIG["bundle"]["hop_s"], p), window_frames=p.n_frames, n_mels=p.n_mels)


def _grid_windows(tiny_run, spec, n=None, rec=None):
    """The first n (all: None) consecutive windows at the hop of a recording (the longest: None)."""
    prep = tiny_run.result.prepared
    f = (prep.frames[rec] if rec else max(prep.frames.values(), key=len)).astype(np.float32)
    n = n or 1 + (len(f) - spec.window_frames) // spec.hop_frames
    assert len(f) >= (n - 1) * spec.hop_frames + spec.window_frames
    return np.stack([prep.logmel.features(f[k * spec.hop_frames: k * spec.hop_frames + spec.window_frames])
                     for k in range(n)])


@pytest.fixture(scope="module")
def model(tiny_run):
    """The tiny run's network, saved and loaded back as model.keras, with scores that move from window to
    window: its random backbone's BatchNorm statistics set from real windows in one pass (the tiny run's own
    few steps leave its pooled features nearly constant), and a random head."""
    import keras

    m = keras.models.load_model(tiny_run.out / "model.keras", compile=False)
    prep = tiny_run.result.prepared
    x = np.concatenate([_grid_windows(tiny_run, _spec(tiny_run, 1), rec=r) for r in prep.frames])
    backbone = [layer for layer in m.get_layer("embedder").layers if isinstance(layer, keras.Model)][0]
    backbone.trainable = True  # BatchNorm follows the batch only when trainable
    for layer in backbone.layers:
        layer.trainable = True
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    m.get_layer("embedder")(x, training=True)
    dense = m.get_layer("head").get_layer("scores")
    k, b = dense.get_weights()
    dense.set_weights([np.random.default_rng(0).normal(0, 4 / np.sqrt(len(k)), k.shape).astype(np.float32), b])
    s = m.predict(x, verbose=0)
    print("tiny model's score std per class over windows", s.std(axis=0))
    assert s.std(axis=0).min() > 0.05  # scores that differ between windows, so the comparisons mean something
    return m


def test_one_window_segment_model_is_the_window_model(tiny_run, model):
    from trainer.segment import segment_model

    spec = _spec(tiny_run, 1)
    x = _grid_windows(tiny_run, spec, 5)
    want = model.predict(x, verbose=0)
    for kind in ("probability", "logit"):
        seg = segment_model(model, spec, kind)
        got = np.concatenate([seg.predict(spec.assemble(w[None])[None], verbose=0)[0] for w in x])
        if kind == "logit":
            got = 1 / (1 + np.exp(-got))
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4, kind


def test_int8_segment_model_scores_like_the_window_model(tiny_run, model):
    from trainer.quantize import quantize_int8
    from trainer.segment import representative_segments, segment_int8, segment_model

    prep = tiny_run.result.prepared
    spec = _spec(tiny_run, 4)
    train = [prep.frames[r.id] for r in prep.train.recordings]
    rep = representative_segments(spec, prep.logmel, train, 24, seed=1)
    assert rep.shape == (24, *spec.input_shape) and np.abs(rep).max() > 0
    blob = segment_int8(model, spec, rep)
    seg = Int8Model(blob)
    assert seg.input_shape == (1, *spec.input_shape) and seg.output_shape == (1, 4, len(prep.ds.classes))
    per_window = Int8Model(quantize_int8(model, np.concatenate([_grid_windows(tiny_run, spec, rec=r.id)
                                                                for r in prep.train.recordings])))
    float_seg = segment_model(model, spec)
    s = {k: [] for k in ("int8_seg", "int8_win", "float_seg", "float_win")}
    for rec in prep.val.recordings:  # each recording's windows in order, 4 per segment from the first
        x = _grid_windows(tiny_run, spec, rec=rec.id)
        s["int8_win"].append(per_window.predict_batch(x))
        s["float_win"].append(model.predict(x, verbose=0))
        s["int8_seg"].append(score_windows(spec, seg.predict, x))
        s["float_seg"].append(score_windows(spec, lambda z: float_seg.predict(z[None], verbose=0)[0], x))
    s = {k: np.concatenate(v) for k, v in s.items()}
    assert s["int8_seg"].shape == s["int8_win"].shape and len(s["int8_seg"]) > 4

    def diff(a, b):
        return float(np.abs(s[a] - s[b]).mean())

    corr = float(np.corrcoef(s["int8_seg"].ravel(), s["int8_win"].ravel())[0, 1])
    print(f"tiny W=4 mean |diff|: int8 segment vs int8 window {diff('int8_seg', 'int8_win'):.3f} (correlation "
          f"{corr:.3f}), float segment vs float window {diff('float_seg', 'float_win'):.3f}, int8 vs float: "
          f"segment {diff('int8_seg', 'float_seg'):.3f}, window {diff('int8_win', 'float_win'):.3f}")
    # This random tiny network is far more sensitive than a trained one (1 s windows of 3 columns, so the
    # neighbours' context weighs more; int8 alone moves its window scores by ~0.14): the segment model
    # quantizes no worse than the window model, and scores the windows alike.
    assert diff("int8_seg", "float_seg") < 1.5 * diff("int8_win", "float_win") + 0.01
    assert corr > 0.4  # measured 0.53 (float segment vs float window: the same context effect)


def test_segment_bundle_loads_on_the_edge(tiny_run, model, tmp_path):
    from trainer.bundle import write_bundle
    from trainer.segment import representative_segments, segment_int8

    prep = tiny_run.result.prepared
    spec = _spec(tiny_run, 3)
    rep = representative_segments(spec, prep.logmel, [prep.frames[r.id] for r in prep.train.recordings], 12)
    blob = segment_int8(model, spec, rep, "logit")
    x = spec.assemble(_grid_windows(tiny_run, spec, 3))
    path = write_bundle(tmp_path / "seg.bundle", model_bytes=blob, classes=prep.ds.classes, names=prep.ds.names,
                        frontend=prep.logmel.params, hop_s=spec.hop_frames * prep.logmel.params.hop_length /
                        prep.logmel.params.sample_rate, thresholds={c: 0.5 for c in prep.ds.classes},
                        selftest_features=x, private_key=tiny_run.private_key, output_kind="logit", segment=spec)
    b = load_bundle(path, load_public_key(tiny_run.public_key_path))
    assert b.segment == spec
    m = load_model(b)
    assert m.output_shape == (1, 3, len(prep.ds.classes))
    s = m.predict(x)
    assert s.shape == (3, len(prep.ds.classes)) and ((s >= 0) & (s <= 1)).all()


def test_avgmax_model_is_refused_naming_the_option():
    from trainer.config import ModelSection
    from trainer.model import build_model
    from trainer.segment import SegmentConversionError, segment_model

    parts = build_model(ModelSection(alpha=0.35, weights="none", pooling="avgmax"), (32, 97, 1), 3)
    with pytest.raises(SegmentConversionError, match="model.pooling: avg"):
        segment_model(parts.model, SegmentSpec(windows=2, hop_frames=50, window_frames=97, n_mels=32))


@pytest.fixture(scope="module")
def trained_segment_run(tmp_path_factory, train_data):
    """A tiny training run that ships a segment model of 4 windows."""
    from edge.contract.signing import generate_keypair, load_private_key
    from trainer.config import parse_train_config
    from trainer.train import run

    base = tmp_path_factory.mktemp("segment_run")
    priv, pub = generate_keypair(base / "keys")
    cfg = parse_train_config({**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "eval_hop_s": 0.5},
                              "bundle": {**TINY_CONFIG["bundle"], "inference": "segment", "segment_windows": 4}})
    cfg.data.cache_dir = base / "cache"
    res = run(train_data, base / "out", cfg, private_key=load_private_key(priv), progress=False, write_plots=False)
    return res, pub, cfg


def test_segment_training_run_ships_a_segment_bundle_the_edge_loads(trained_segment_run):
    res, pub, cfg = trained_segment_run
    b = load_bundle(res.bundle_path, load_public_key(pub))
    p = res.prepared
    assert b.segment == SegmentSpec(windows=4, hop_frames=50, window_frames=p.logmel.params.n_frames,
                                    n_mels=p.logmel.params.n_mels)
    assert b.manifest["inference"] == {"kind": "segment", "windows": 4}
    m = load_model(b)  # its self-test (an assembled segment of hold-out windows) passes
    assert m.output_shape == (1, 4, len(p.ds.classes))
    assert set(b.thresholds) == set(p.ds.classes) and all(0 < t < 1 for t in b.thresholds.values())
    metrics = b.manifest["metrics"]
    assert metrics["inference"]["kind"] == "segment" and metrics["inference"]["windows"] == 4
    assert "macro_roc_auc" in metrics["inference"]["window_int8"]["metrics"]
    assert metrics["macro_roc_auc"] == pytest.approx(res.int8_metrics["macro_roc_auc"])
    assert res.int8_scores.shape == res.float_scores.shape
    assert np.array_equal(np.load(res.bundle_path.parent / "validation_scores_int8.npy"), res.int8_scores)


def test_evaluate_bundle_scores_a_segment_bundle_as_the_training_run_did(trained_segment_run, train_data):
    """Parity: the bundle, loaded as the edge loads it and scored per recording in order, gives the hold-out
    scores the training run computed and tuned its thresholds on."""
    from trainer.data import FrameCache, eval_windows
    from trainer.evaluate_bundle import bundle_scores

    res, pub, cfg = trained_segment_run
    p = res.prepared
    b = load_bundle(res.bundle_path, load_public_key(pub))
    frames = FrameCache(b.frontend, cfg.data.cache_dir).load(p.val)
    w = eval_windows(p.val, frames, b.frontend, b.hop_s)
    assert np.array_equal(w.starts, p.val_windows.starts) and np.array_equal(w.rec_index, p.val_windows.rec_index)
    got = bundle_scores(b, load_model(b), frames, w)
    assert np.abs(got - res.int8_scores).max() < 1e-6


def test_apply_segment_on_a_saved_model_and_its_bundle_score_alike(tiny_run, model, tmp_path):
    """apply_segment on a Result whose parts are just the Keras model (how earlier runs' model.keras files are
    converted), with scores that move: the bundle scored as the edge scores it gives the scores the
    conversion tuned on, and scoring each window alone would not."""
    from types import SimpleNamespace

    from trainer.bundle import write_bundle
    from trainer.config import parse_train_config
    from trainer.data import FrameCache, eval_windows
    from trainer.evaluate_bundle import bundle_scores
    from trainer.segment import apply_segment
    from trainer.train import Result, evaluate_both

    cfg = parse_train_config({**TINY_CONFIG, "data": {**TINY_CONFIG["data"], "eval_hop_s": 0.5},
                              "bundle": {**TINY_CONFIG["bundle"], "inference": "segment", "segment_windows": 4}})
    p = tiny_run.result.prepared  # its hold-out windows are at 1.5 s: every third window the edge makes
    res = Result(p, SimpleNamespace(model=model))
    evaluate_both(res, cfg)
    window_int8, window_auc = res.int8_scores, res.int8_metrics["macro_roc_auc"]
    spec = apply_segment(res, cfg)
    assert res.inference["window_int8"]["metrics"]["macro_roc_auc"] == window_auc
    assert res.int8_scores.shape == window_int8.shape and not np.array_equal(res.int8_scores, window_int8)
    path = write_bundle(tmp_path / "seg.bundle", model_bytes=res.model_bytes, classes=p.ds.classes,
                        names=p.ds.names, frontend=p.logmel.params, hop_s=cfg.bundle.hop_s,
                        thresholds=res.int8_metrics["thresholds"], selftest_features=res.selftest_features,
                        private_key=tiny_run.private_key, output_kind=cfg.quantize.output_kind, segment=spec)
    b = load_bundle(path, load_public_key(tiny_run.public_key_path))
    frames = FrameCache(b.frontend, tiny_run.cache_dir).load(p.val)
    w = eval_windows(p.val, frames, b.frontend, b.hop_s)
    got = bundle_scores(b, load_model(b), frames, w)
    row = {(w.rec_ids[k], int(s)): i for i, (k, s) in enumerate(zip(w.rec_index, w.starts))}
    vw = p.val_windows
    sel = [row[(vw.rec_ids[k], int(s))] for k, s in zip(vw.rec_index, vw.starts)]
    assert np.abs(got[sel] - res.int8_scores).max() < 1e-6
    one = Int8Model(b.model_bytes, output_kind=cfg.quantize.output_kind)  # each window as a segment of one
    single = np.stack([one.predict(spec.assemble(x[None]))[0] for x in p.x_val])
    assert np.abs(single - res.int8_scores).max() > 1e-2


def test_the_trainer_scores_a_recording_with_the_windows_and_chunks_of_the_edge(trained_segment_run, tmp_path):
    """trainer.segment.recording_scores (how the hold-out is scored, thresholds tuned and bundles evaluated) and
    the edge's pipeline replaying the same file make the same windows, tail window included, and put them in
    the same chunks: with a probe model whose rows follow each window's own features in its place, the scores
    agree window by window."""
    from datetime import datetime, timezone
    from pathlib import Path

    import soundfile as sf

    from edge.contract.frontend import LogMel
    from edge.detection.pipeline import Pipeline
    from edge.types import AudioBlock
    from fixtures_segment import ProbeModel
    from trainer.data import FrameCache
    from trainer.segment import edge_starts, recording_scores

    res, pub, _ = trained_segment_run
    b = load_bundle(res.bundle_path, load_public_key(pub))
    demo = Path(__file__).resolve().parents[1] / "edge" / "demo" / "XC344036_20161110_130000.ogg"
    x, rate = sf.read(str(demo), dtype="float32")
    fe = b.frontend
    assert rate == fe.sample_rate
    p = Pipeline(b, ProbeModel(b.segment))
    p.begin("demo", "file-name")
    edge: list = []
    p.on_window = lambda off, utc, s: edge.append((off, np.array(s)))
    p.feed(AudioBlock(x, datetime(2016, 11, 10, 13, tzinfo=timezone.utc), 0.0, discontinuity=False))
    p.finish()
    frames = FrameCache(fe, tmp_path).frames(demo)
    starts = edge_starts(len(frames), fe.n_frames, b.segment.hop_frames)
    assert (len(frames) - fe.n_frames) % b.segment.hop_frames and len(starts) % b.segment.windows  # a tail, a partial chunk
    mine = recording_scores(b.segment, ProbeModel(b.segment).predict, LogMel(fe), frames, starts)
    assert [round(o, 6) for o, _ in edge] == [round(s * fe.hop_length / fe.sample_rate, 6) for s in starts]
    # the feature cache keeps dB frames as float16: the probe's means agree to ~1e-3, not to the last bit
    tol = 5e-3
    np.testing.assert_allclose(np.stack([r for _, r in edge]), mine, rtol=0, atol=tol)
    feats = np.stack([LogMel(fe).features(frames[s:s + fe.n_frames].astype(np.float32)) for s in starts])
    shifted = score_windows(b.segment, ProbeModel(b.segment).predict, feats[1:])  # chunked one window later
    assert (np.abs(shifted - mine[1:]).max(axis=1) > 4 * tol).mean() > 0.3  # which the tolerance would catch


@pytest.mark.parametrize("bad,key", [({"model": {"pooling": "avgmax"}}, "model.pooling"),
                                     ({"bundle": {"hop_s": 1.234}}, "bundle.hop_s"),
                                     ({"bundle": {"hop_s": 1.0}, "data": {"eval_hop_s": 1.5}}, "data.eval_hop_s"),
                                     ({"bundle": {"segment_windows": 65}}, "bundle.segment_windows")])
def test_segment_config_errors_name_the_key(bad, key):
    from trainer.config import TrainConfigError, parse_train_config

    conf = {"bundle": {"inference": "segment", **bad.get("bundle", {})}, **{k: v for k, v in bad.items() if k != "bundle"}}
    with pytest.raises(TrainConfigError, match=key.replace(".", r"\.")) as exc:
        parse_train_config(conf)
    assert "\n" not in str(exc.value)
    assert parse_train_config({"bundle": {"inference": "segment"}}).bundle.segment_windows == 16
