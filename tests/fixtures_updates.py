"""Fixtures for the model-update tests: a team key pair and real signed bundles.

Bundles are built with ``edge.contract.bundle.build_bundle`` around the real int8
model of the bundled default (whatever model that is today); the self-test
expectation is computed by running it. Bad kinds are made by altering a good
bundle and, where the manifest changes, signing it again with the team key,
so each is refused for its own reason and not for a broken signature.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from edge.contract import bundle as B
from edge.config import DEFAULT_BUNDLE, DEFAULT_PUBLIC_KEY
from edge.contract.interpreter import Int8Model
from edge.contract.signing import generate_keypair, key_id, load_private_key, load_public_key
from edge.types import AudioBlock
from bundle_tools import members, rezip


@lru_cache(maxsize=1)
def default_bundle() -> B.Bundle:
    return B.load_bundle(DEFAULT_BUNDLE, load_public_key(DEFAULT_PUBLIC_KEY))


@lru_cache(maxsize=1)
def _selftest_output() -> tuple[int, ...]:
    b = default_bundle()
    return tuple(int(v) for v in Int8Model(b.model_bytes).invoke_int8(b.selftest_input).reshape(-1))


def make_bundle(private_key, version: str, *, name: str = "test-model", thresholds: float | None = 0.0,
                selftest_shift: int = 0, padding_bytes: int = 0) -> bytes:
    """A good bundle around the default model's bytes, signed with ``private_key``.

    Thresholds default to 0 so every window yields detections: the tests look
    at which model made them, not at what it heard.
    """
    d = default_bundle()
    out = np.clip(np.asarray(_selftest_output()) + selftest_shift, -128, 127)
    labels = d.labels
    return B.build_bundle(
        name=name, version=version, model_bytes=d.model_bytes, labels=labels, frontend=d.frontend,
        hop_s=d.hop_s,
        thresholds={lab.label: thresholds for lab in labels} if thresholds is not None else d.thresholds,
        selftest_input=d.selftest_input, selftest_output=[int(v) for v in out], private_key=private_key,
        input_shape=d.manifest["tensors"]["input_shape"], output_shape=d.manifest["tensors"]["output_shape"],
        training={"note": "test bundle", "padding": "x" * padding_bytes},
        output_kind=d.manifest["tensors"].get("output_kind", "probability"), segment=d.segment,
    )


_members, _zip = members, rezip


def resign(data: bytes, private_key, mutate) -> bytes:
    """Change the manifest with ``mutate(manifest)`` and sign it again."""
    members = _members(data)
    manifest = json.loads(members[B.MANIFEST])
    mutate(manifest)
    mbytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    members[B.MANIFEST] = mbytes
    members[B.SIGNATURE] = json.dumps({
        "algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(mbytes)).decode()}).encode()
    return _zip(members)


def bad_bundles(private_key, other_key, version: str) -> dict[str, tuple[bytes, str]]:
    """Each bad kind: (bytes, a phrase its refusal reason must contain)."""
    good = make_bundle(private_key, version)
    members = _members(good)
    unsigned = _zip({n: b for n, b in members.items() if n != B.SIGNATURE})
    tampered_model = bytearray(members[B.MODEL])
    tampered_model[len(tampered_model) // 2] ^= 0xFF
    tampered = _zip({**members, B.MODEL: bytes(tampered_model)})

    def model_input(m):
        """The input shape the manifest's front-end (and inference block, if any) implies."""
        from edge.contract.frontend import FrontendParams
        from edge.contract.segment import SegmentSpec

        fe = FrontendParams.from_dict(m["frontend"])
        seg = SegmentSpec.from_manifest(m, fe)
        return [1, *(seg.input_shape if seg else fe.input_shape)]

    def frontend_16k(m):
        m["frontend"]["sample_rate"] = 16000
        m["frontend"]["fmax"] = 8000.0
        m["tensors"]["input_shape"] = model_input(m)

    def frontend_unknown(m):
        m["frontend"]["normalization"] = "pcen"

    def input_shape(m):
        m["tensors"]["input_shape"] = [1, 128, 300, 1]

    def window_shape(m):  # front-end and manifest agree, the model's real input does not
        m["frontend"]["window_s"] = 2.0
        m["window_s"] = 2.0
        m["hop_s"] = 1.0
        m["tensors"]["input_shape"] = model_input(m)

    def selftest(m):
        m["selftest"]["output"] = [min(127, v + 60) if v < 60 else v - 60 for v in m["selftest"]["output"]]

    # the self-test input's shape must follow the manifest for the shape cases to reach the interpreter
    def with_selftest_input(data, shape):
        mem = _members(data)
        arr = np.zeros(shape, dtype=np.int8)
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        mem[B.SELFTEST] = buf.getvalue()
        out = _zip(mem)
        return resign(out, private_key, lambda m: m["members"].__setitem__(
            B.SELFTEST, {"sha256": B.sha256_hex(buf.getvalue()), "size": len(buf.getvalue())}))

    wrong_window = resign(good, private_key, window_shape)
    n_frames = json.loads(_members(wrong_window)[B.MANIFEST])["tensors"]["input_shape"]
    wrong_window = with_selftest_input(wrong_window, n_frames)
    wrong_rate = resign(good, private_key, frontend_16k)
    wrong_rate = with_selftest_input(wrong_rate, json.loads(_members(wrong_rate)[B.MANIFEST])["tensors"]["input_shape"])
    return {
        "unsigned": (unsigned, "unsigned"),
        "other key": (make_bundle(other_key, version), "does not verify"),
        "tampered model bytes": (tampered, "tampered"),
        "truncated": (good[: len(good) * 2 // 3], "not a bundle"),
        "wrong front-end (16 kHz)": (wrong_rate, "sample rate"),
        "unknown front-end": (resign(good, private_key, frontend_unknown), "normalization"),
        "wrong input shape": (resign(good, private_key, input_shape), "input shape"),
        "model input differs from manifest": (wrong_window, "differ from the manifest"),
        "self-test mismatch": (resign(good, private_key, selftest), "self-test failed"),
        "not a bundle": (b"<html>502 Bad Gateway</html>", "not a bundle"),
        "json, not a bundle": (json.dumps({"version": version}).encode(), "not a bundle"),
    }


class Keys:
    def __init__(self, root):
        priv, pub = generate_keypair(root / "team")
        opriv, _ = generate_keypair(root / "other")
        self.private, self.public = load_private_key(priv), load_public_key(pub)
        self.other = load_private_key(opriv)
        self.private_path, self.public_path = priv, pub


@pytest.fixture
def team_keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys")


# -- a device: the parts the daemon wires, assembled for the update tests ---------
# the demo recording (credited in CREDITS.md)
CLIP = Path(__file__).resolve().parents[1] / "edge" / "demo" / "XC344036_20161110_130000.ogg"


def clip_samples(sample_rate: int) -> np.ndarray:
    """A real recording, decoded by the edge's own file source."""
    from edge.sources.file import FileSource

    src = FileSource(CLIP, sample_rate, block_s=4.0)
    try:
        return np.concatenate([b.samples for b in src.blocks(threading.Event())])
    finally:
        src.close()


class Feeder:
    """The daemon's processing thread in small: a recording, looped, fed block by block.

    Blocks are contiguous (no discontinuity), so any audio lost at a model
    swap shows as a gap between the windows of the old and the new model.
    ``pace_s`` sleeps between blocks (0: as fast as the pipeline goes).
    """

    def __init__(self, pipeline, sink, samples: np.ndarray, sample_rate: int, *, block_s: float = 0.5,
                 pace_s: float = 0.005):
        self.pipeline, self.sink, self.samples, self.sr = pipeline, sink, samples, sample_rate
        self.block = int(block_s * sample_rate)
        self.pace_s = pace_s
        self.stop_event = threading.Event()
        self.blocks_fed = 0
        self.detections: list = []
        self.first_block_of: dict[str, int] = {}  # model version -> first block after which it ran
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> "Feeder":
        self.pipeline.begin("loop:" + CLIP.name, "clock")
        self._thread.start()
        return self

    def _emit(self, dets) -> None:
        if dets:
            self.detections += dets
            if self.sink is not None:
                self.sink.insert(dets)

    def _run(self) -> None:
        t0 = datetime.now(timezone.utc)
        pos = 0
        try:
            while not self.stop_event.is_set():
                chunk = np.take(self.samples, range(pos, pos + self.block), mode="wrap")
                offset = self.blocks_fed * self.block / self.sr
                self._emit(self.pipeline.feed(AudioBlock(chunk, t0 + timedelta(seconds=offset), offset)))
                pos = (pos + self.block) % len(self.samples)
                self.blocks_fed += 1
                self.first_block_of.setdefault(self.pipeline.bundle.version, self.blocks_fed)
                if self.pace_s:
                    time.sleep(self.pace_s)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def wait_blocks(self, n: int, timeout: float = 60.0) -> None:
        target = self.blocks_fed + n
        end = time.monotonic() + timeout
        while self.blocks_fed < target and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.01)
        assert self.blocks_fed >= target, f"feeder stalled at {self.blocks_fed} blocks ({self.error!r})"

    def stop(self) -> list:
        self.stop_event.set()
        self._thread.join(30)
        if self.error:
            raise self.error
        self._emit(self.pipeline.finish())
        return self.detections
