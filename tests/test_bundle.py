"""Bundle verification with a real trained int8 model: every refusal says why."""
from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest

from edge.contract.bundle import MANIFEST, MODEL, SELFTEST, SIGNATURE, BundleError, load_bundle, parse_bundle
from edge.contract.interpreter import InterpreterError, load_model
from edge.contract.signing import generate_keypair, key_id, load_private_key, load_public_key
from bundle_tools import members, rezip


_members, _zip = members, rezip


def _resign(data: bytes, private_key, mutate=None, members=None) -> bytes:
    """Change the manifest (and members) and sign it again with a trusted key."""
    m = _members(data)
    m.update(members or {})
    manifest = json.loads(m[MANIFEST])
    for name, blob in (members or {}).items():
        manifest["members"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    if mutate:
        mutate(manifest)
    mb = json.dumps(manifest, indent=1, sort_keys=True).encode()
    m[MANIFEST] = mb
    m[SIGNATURE] = json.dumps({"algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
                               "signature": base64.b64encode(private_key.sign(mb)).decode()}).encode()
    return _zip(m)


@pytest.fixture(scope="module")
def good(tiny_run):
    return tiny_run.bundle_path.read_bytes(), load_public_key(tiny_run.public_key_path), tiny_run.private_key


def test_good_bundle_loads_and_runs(tiny_run, good):
    data, pub, _ = good
    b = load_bundle(tiny_run.bundle_path, pub)
    assert [lab.label for lab in b.labels] == ["Corvus_corax", "Fringilla_coelebs", "Parus_major"]
    assert b.labels[2].common_name == "Great Tit"
    assert b.hop_s == 0.5 and b.frontend.n_mels == 32
    assert set(b.thresholds) == {lab.label for lab in b.labels}
    model = load_model(b)
    assert model.input_shape == (1, 32, b.frontend.n_frames, 1)
    scores = model.predict(np.zeros(b.frontend.input_shape, np.float32))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    assert "tiny" in b.describe()


def test_tampered_model_is_refused(good):
    data, pub, _ = good
    m = _members(data)
    model = bytearray(m[MODEL])
    model[len(model) // 2] ^= 0xFF
    m[MODEL] = bytes(model)
    with pytest.raises(BundleError, match="model.tflite does not match the sha256.*tampered"):
        parse_bundle(_zip(m), pub)


def test_tampered_selftest_is_refused(good):
    data, pub, _ = good
    m = _members(data)
    m[SELFTEST] = m[SELFTEST][:-1] + bytes([m[SELFTEST][-1] ^ 1])
    with pytest.raises(BundleError, match="selftest_input.npy does not match"):
        parse_bundle(_zip(m), pub)


def test_edited_manifest_breaks_the_signature(good):
    data, pub, _ = good
    m = _members(data)
    manifest = json.loads(m[MANIFEST])
    manifest["thresholds"] = {k: 0.01 for k in manifest["thresholds"]}
    m[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with pytest.raises(BundleError, match="signature does not verify"):
        parse_bundle(_zip(m), pub)


@pytest.mark.parametrize("cut", [0.5, 0.98])
def test_truncated_bundle_is_refused(good, cut):
    data, pub, _ = good
    with pytest.raises(BundleError, match="not a bundle|damaged|missing|unsigned"):
        parse_bundle(data[: int(len(data) * cut)], pub)


def test_unsigned_bundle_is_refused(good):
    data, pub, _ = good
    m = _members(data)
    del m[SIGNATURE]
    with pytest.raises(BundleError, match="unsigned"):
        parse_bundle(_zip(m), pub)


def test_wrong_key_is_refused(good, tmp_path):
    data, _, _ = good
    _, other_pub = generate_keypair(tmp_path / "other")
    other = load_public_key(other_pub)
    with pytest.raises(BundleError, match=f"does not verify with the trusted key {key_id(other)}.*names key"):
        parse_bundle(data, other)


def test_signed_by_an_untrusted_key_is_refused(good, tmp_path):
    data, pub, _ = good
    priv, _ = generate_keypair(tmp_path / "attacker")
    forged = _resign(data, load_private_key(priv))
    with pytest.raises(BundleError, match="does not verify with the trusted key"):
        parse_bundle(forged, pub)


@pytest.mark.parametrize("change,reason", [
    (lambda m: m["frontend"].update(normalization="pcen"), "normalization 'pcen' is not implemented"),
    (lambda m: m["frontend"].update(preemphasis=0.97), "unknown front-end parameter"),
    (lambda m: m["frontend"].update(version=2), "front-end version 2"),
    (lambda m: m["frontend"].update(kind="mfcc"), "kind 'mfcc'"),
    (lambda m: m["frontend"].update(fmax=40000.0), "fmax"),
])
def test_front_end_parameters_the_edge_cannot_honour(good, change, reason):
    data, pub, priv = good
    with pytest.raises(BundleError, match=f"front-end parameters this edge cannot honour.*{reason}"):
        parse_bundle(_resign(data, priv, change), pub)


@pytest.mark.parametrize("change,reason", [
    (lambda m: m["tensors"].update(input_shape=[1, 128, 297, 1]), "input shape .* does not match the front-end"),
    (lambda m: m["tensors"].update(output_shape=[1, 5]), "output shape .* does not match 3 labels"),
    (lambda m: m["tensors"].update(input_dtype="float32"), "only full-integer int8"),
    (lambda m: m.update(hop_s=5.0), "hop_s 5.0"),
    (lambda m: m.update(thresholds={"Nope": 0.5}), "thresholds for unknown labels"),
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m.pop("labels"), "lacks \\['labels'\\]"),
])
def test_inconsistent_manifest_is_refused(good, change, reason):
    data, pub, priv = good
    with pytest.raises(BundleError, match=reason):
        parse_bundle(_resign(data, priv, change), pub)


def test_model_that_does_not_match_its_front_end_fails_to_load(good):
    """Signed and self-consistent manifest, but the model's tensors are for other parameters."""
    data, pub, priv = good

    def change(m):
        m["frontend"]["n_mels"] = 64
        m["tensors"]["input_shape"] = [1, 64, m["tensors"]["input_shape"][2], 1]

    b = parse_bundle(_resign(data, priv, change, members={SELFTEST: _npy(np.zeros((1, 64, 97, 1), np.int8))}), pub)
    with pytest.raises(InterpreterError, match="differ from the manifest"):
        load_model(b)


def test_wrong_selftest_expectation_fails_to_load(good):
    data, pub, priv = good

    def change(m):
        m["selftest"]["output"] = [(v + 100) % 128 for v in m["selftest"]["output"]]

    with pytest.raises(InterpreterError, match="self-test failed"):
        load_model(parse_bundle(_resign(data, priv, change), pub))


def test_not_a_bundle(tmp_path, good):
    _, pub, _ = good
    text = tmp_path / "notes.bundle"
    text.write_text("hello")
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(text, pub)
    with pytest.raises(BundleError, match="missing member"):
        parse_bundle(_zip({SIGNATURE: b"{}", "readme.txt": b"x"}), pub)
    with pytest.raises(BundleError, match="cannot read"):
        load_bundle(tmp_path / "absent.bundle", pub)


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_event_rule_round_trips_and_old_bundles_load(good):
    """The operating point's min_windows: carried by the signed manifest, 1 when absent (older bundles)."""
    from edge.detection.postprocess import ModelInfo, PostProcessor, SourceInfo

    data, pub, priv = good
    two = parse_bundle(_resign(data, priv, lambda m: m.update(min_windows=2)), pub)
    assert two.min_windows == 2 and ModelInfo.from_bundle(two).min_windows == 2
    assert two.describe().endswith(", events need 2 windows in a row)")
    assert PostProcessor(ModelInfo.from_bundle(two), SourceInfo("d", "s", "clock")).min_windows == 2
    old = parse_bundle(_resign(data, priv, lambda m: m.pop("min_windows", None)), pub)
    assert "min_windows" not in old.manifest and old.min_windows == 1 and "in a row" not in old.describe()


@pytest.mark.parametrize("value", [0, -1, 11, 2.0, True, "2", None, [2]])
def test_invalid_event_rule_is_refused(good, value):
    data, pub, priv = good
    with pytest.raises(BundleError, match=r"^operating point min_windows .* is not an integer from 1 to 10 "
                                          r"\(consecutive windows that confirm an event\)$"):
        parse_bundle(_resign(data, priv, lambda m: m.update(min_windows=value)), pub)


def _as_segment(windows):
    """A manifest change declaring segment inference with tensors of the matching shapes."""
    from edge.contract.frontend import FrontendParams
    from edge.contract.segment import SegmentSpec

    def change(m):
        m["inference"] = {"kind": "segment", "windows": windows}
        s = SegmentSpec.from_manifest(m, FrontendParams.from_dict(m["frontend"]))
        m["tensors"]["input_shape"] = [1, *s.input_shape]
        m["tensors"]["output_shape"] = [1, windows, len(m["labels"])]
    return change


def test_segment_inference_block_round_trips_and_window_bundles_have_none(good):
    from edge.contract.segment import SegmentSpec

    data, pub, priv = good
    fe = parse_bundle(data, pub).frontend
    assert parse_bundle(data, pub).segment is None
    want = SegmentSpec(windows=4, hop_frames=50, window_frames=fe.n_frames, n_mels=fe.n_mels)  # hop 0.5 s
    selftest = _npy(np.zeros((1, *want.input_shape), np.int8))
    assert parse_bundle(_resign(data, priv, _as_segment(4), members={SELFTEST: selftest}), pub).segment == want


@pytest.mark.parametrize("change,reason", [
    (lambda m: m.update(inference={"kind": "pyramid"}), r"inference.kind 'pyramid' is not supported"),
    (lambda m: m.update(inference={"kind": "segment", "windows": 4}), r"model input shape .* does not match the "
                                                                       r"front-end's .* \(4 windows per segment\)"),
    (lambda m: (_as_segment(4)(m), m["tensors"].update(output_shape=[1, 3])),
     r"output shape \[1, 3\] does not match \[1, 4, 3\] \(4 windows of 3 labels\)"),
])
def test_segment_inference_this_edge_cannot_honour_is_refused(good, change, reason):
    data, pub, priv = good
    with pytest.raises(BundleError, match=reason):
        parse_bundle(_resign(data, priv, change), pub)
