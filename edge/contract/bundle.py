"""The model bundle: the one contract between trainer and edge.

A bundle is one ZIP file (stored, not compressed) holding

- ``manifest.json``: everything about the model (labels, front-end
  parameters, window and hop, the operating point - per-label thresholds and
  ``min_windows``, optional, 1 when absent -, version, creation time, training
  summary and metrics, sha256 and size of every other member, tensor shapes,
  and the self-test expectation);
- ``model.tflite``: the full-integer int8 model;
- ``selftest_input.npy``: a fixed int8 input whose int8 output is in the manifest;
- ``signature.json``: Ed25519 signature of the exact ``manifest.json`` bytes,
  with the signing key's id.

The signature covers the manifest, and the manifest pins every member by
sha256, so changing any byte of any member is detected. ``load_bundle``
checks, in order: it is a ZIP, the members exist, it is signed, the signature
verifies with the given public key, the manifest is well-formed, the hashes
and sizes match, and the front-end parameters and tensor shapes are ones this
edge implements. Any failure raises ``BundleError`` with the reason.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.contract.archive import ArchiveError, BoundedZip
from edge.contract.frontend import FrontendError, FrontendParams
from edge.contract.manifest import FORMAT, FORMAT_VERSION, ManifestError, check_manifest
from edge.contract.record import DEFAULT_OUTPUT_KIND, OUTPUT_KINDS, utc_now
from edge.contract.segment import SegmentError, SegmentSpec
from edge.contract.signing import key_id, verify

log = logging.getLogger(__name__)

MANIFEST, MODEL, SELFTEST, SIGNATURE = "manifest.json", "model.tflite", "selftest_input.npy", "signature.json"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024  # read before the signature is checked: bounded
MAX_SIGNATURE_BYTES = 4096
MAX_MIN_WINDOWS = 10  # windows in a row that confirm an event (operating point); 10 windows = 16.5 s at hop 1.5 s


def message_limit(max_bytes: int) -> int:
    """Bytes a bundle message (MQTT) may have: the bundle limit and 1 MB more, so that a bundle just too big
    is still refused with a reason. Receiving and checking a message costs about three times its size in
    memory, so this bounds what any message can cost."""
    return max_bytes + 1024 * 1024


class BundleError(ValueError):
    """A bundle that is refused; the message says why."""


@dataclass(frozen=True)
class Label:
    label: str
    scientific_name: str
    common_name: str


@dataclass
class Bundle:
    manifest: dict[str, Any]
    model_bytes: bytes
    selftest_input: np.ndarray
    key_id: str
    path: str | None = None
    frontend: FrontendParams = field(init=False)

    def __post_init__(self) -> None:
        self.frontend = FrontendParams.from_dict(self.manifest["frontend"])

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def sha256(self) -> str:
        return self.manifest["members"][MODEL]["sha256"]

    @property
    def labels(self) -> list[Label]:
        return [Label(**lab) for lab in self.manifest["labels"]]

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest["thresholds"])

    @property
    def min_windows(self) -> int:
        """Consecutive windows at or above a species' threshold that confirm an event (operating point)."""
        return int(self.manifest.get("min_windows", 1))

    @property
    def hop_s(self) -> float:
        return float(self.manifest["hop_s"])

    @property
    def segment(self) -> SegmentSpec | None:
        """Segment inference (several windows per invoke, edge.contract.segment); None: one window per invoke."""
        return SegmentSpec.from_manifest(self.manifest, self.frontend)

    def describe(self) -> str:
        m = self.manifest
        metrics = m.get("metrics", {})
        return (
            f"{m['name']} {m['version']} ({len(m['labels'])} labels, sha256 {self.sha256[:12]}, "
            f"signed by {self.key_id}, created {m['created_utc']}, "
            f"macro ROC-AUC {metrics.get('macro_roc_auc', 'n/a')}"
            + (f", events need {self.min_windows} windows in a row)" if self.min_windows > 1 else ")")
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def build_bundle(
    *,
    name: str,
    version: str,
    model_bytes: bytes,
    labels: list[Label],
    frontend: FrontendParams,
    hop_s: float,
    thresholds: dict[str, float],
    selftest_input: np.ndarray,
    selftest_output: list[int],
    private_key,
    input_shape: list[int],
    output_shape: list[int],
    training: dict | None = None,
    metrics: dict | None = None,
    selftest_tolerance: int = 2,
    extra: dict | None = None,
    output_kind: str = DEFAULT_OUTPUT_KIND,
    min_windows: int = 1,
    segment: SegmentSpec | None = None,
) -> bytes:
    """Assemble and sign a bundle; returns its bytes. Pure: no TensorFlow."""
    frontend.validate()
    selftest_bytes = _npy_bytes(np.asarray(selftest_input, dtype=np.int8))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": str(version),
        "created_utc": utc_now(ms=False),
        "labels": [lab.__dict__ for lab in labels],
        "frontend": frontend.to_dict(),
        "window_s": frontend.window_s,
        "hop_s": float(hop_s),
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "min_windows": int(min_windows),
        "tensors": {"input_shape": list(input_shape), "input_dtype": "int8",
                    "output_shape": list(output_shape), "output_dtype": "int8",
                    "output_kind": output_kind},
        "selftest": {"output": [int(v) for v in selftest_output], "tolerance": int(selftest_tolerance)},
        "training": training or {},
        "metrics": metrics or {},
        "members": {
            MODEL: {"sha256": sha256_hex(model_bytes), "size": len(model_bytes)},
            SELFTEST: {"sha256": sha256_hex(selftest_bytes), "size": len(selftest_bytes)},
        },
    }
    if segment is not None:
        manifest["inference"] = segment.to_manifest()
    if extra:
        manifest.update(extra)
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    signature = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(MANIFEST, manifest_bytes)
        zf.writestr(MODEL, model_bytes)
        zf.writestr(SELFTEST, selftest_bytes)
        zf.writestr(SIGNATURE, json.dumps(signature))
    return buf.getvalue()


def _check_shapes(m: dict, frontend: FrontendParams) -> None:
    t = m["tensors"]
    try:
        seg = SegmentSpec.from_manifest(m, frontend)
    except SegmentError as exc:
        raise BundleError(str(exc)) from exc
    want_in = [1, *(seg.input_shape if seg else frontend.input_shape)]
    if list(t.get("input_shape", [])) != want_in:
        raise BundleError(f"model input shape {t.get('input_shape')} does not match the front-end's {want_in}"
                          + (f" ({seg.windows} windows per segment)" if seg else ""))
    n = len(m["labels"])
    want_out = [1, seg.windows, n] if seg else [1, n]
    if list(t.get("output_shape", [])) != want_out:
        raise BundleError(f"model output shape {t.get('output_shape')} does not match "
                          + (f"{want_out} ({seg.windows} windows of {n} labels)" if seg else f"{n} labels"))
    if t.get("input_dtype") != "int8" or t.get("output_dtype") != "int8":
        raise BundleError("only full-integer int8 models (int8 input and output) are supported")
    if t.get("output_kind", DEFAULT_OUTPUT_KIND) not in OUTPUT_KINDS:
        raise BundleError(f"model output kind {t.get('output_kind')!r} is not one of {OUTPUT_KINDS}")
    hop = float(m["hop_s"])
    if not 0 < hop <= frontend.window_s:
        raise BundleError(f"hop_s {hop} must be in (0, window_s={frontend.window_s}]")
    check_min_windows(m.get("min_windows", 1))


def check_min_windows(v: Any) -> None:
    """The operating point's event rule: an integer from 1 to MAX_MIN_WINDOWS, else BundleError."""
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_MIN_WINDOWS:
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise BundleError(f"operating point min_windows {shown} is not an integer from 1 to {MAX_MIN_WINDOWS} "
                          "(consecutive windows that confirm an event)")


def _read_signed(arc: BoundedZip, where: str) -> tuple[bytes, bytes, str]:
    """(manifest bytes, signature, signer) after the signature checks out."""
    if SIGNATURE not in arc.names:
        raise BundleError(f"{where}: unsigned (no {SIGNATURE})")
    if MANIFEST not in arc.names:
        raise BundleError(f"{where}: missing member(s) {[MANIFEST]}")
    manifest_bytes = arc.read(MANIFEST, MAX_MANIFEST_BYTES)
    try:
        sig_doc = json.loads(arc.read(SIGNATURE, MAX_SIGNATURE_BYTES))
        signature = base64.b64decode(sig_doc["signature"], validate=True)
        signer = str(sig_doc.get("key_id", "?"))[:80]
        algorithm = sig_doc.get("algorithm")
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where}: unreadable signature ({str(exc)[:200]})") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{where}: malformed signature record ({type(exc).__name__}: {str(exc)[:200]})") from None
    if algorithm != "ed25519":
        raise BundleError(f"{where}: signature algorithm {str(algorithm)[:40]!r} is not ed25519")
    return manifest_bytes, signature, signer


def parse_bundle(data: bytes, public_key, path: str | None = None, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Verify bundle bytes against a public key; return the Bundle or raise BundleError.

    Nothing is inflated before it is measured (``edge.contract.archive``), the
    signature is checked before the manifest is parsed, and the signed
    manifest's ``members`` must name exactly the archive's other members.
    """
    where = path or "bundle"
    if len(data) > max_bytes:
        raise BundleError(f"{where}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        arc = BoundedZip(data, max_bytes)
    except ArchiveError as exc:
        msg = str(exc)
        raise BundleError(f"{where}: {'not a bundle (' + msg + ')' if msg.startswith('not a ZIP') else msg}") from None
    try:
        return _parse(arc, public_key, where, path)
    except ArchiveError as exc:
        raise BundleError(f"{where}: {exc}") from None
    finally:
        arc.close()


def _parse(arc: BoundedZip, public_key, where: str, path: str | None) -> Bundle:
    manifest_bytes, signature, signer = _read_signed(arc, where)
    expected = key_id(public_key)
    if not verify(public_key, signature, manifest_bytes):
        hint = "" if signer == expected else f" (it names key {signer})"
        raise BundleError(f"{where}: signature does not verify with the trusted key {expected}{hint}")
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{where}: manifest is not JSON ({str(exc)[:200]})") from None
    try:
        check_manifest(manifest, MODEL, SELFTEST)
    except ManifestError as exc:
        raise BundleError(f"{where}: {exc}") from None
    pinned = set(manifest["members"])
    extra = sorted(arc.names - pinned - {MANIFEST, SIGNATURE})
    if extra:
        raise BundleError(f"{where}: member(s) {extra[:5]} not pinned by the signed manifest")
    missing = sorted(pinned - arc.names)
    if missing:
        raise BundleError(f"{where}: missing member(s) {missing[:5]}")
    blobs = {}
    for member in sorted(pinned):
        pin = manifest["members"][member]
        if arc.size(member) != pin["size"]:
            raise BundleError(f"{where}: {member} does not match the sha256/size in the signed manifest (tampered)")
        blob = arc.read(member)
        if sha256_hex(blob) != pin["sha256"]:
            raise BundleError(f"{where}: {member} does not match the sha256/size in the signed manifest (tampered)")
        blobs[member] = blob
    try:
        frontend = FrontendParams.from_dict(manifest["frontend"])
    except (FrontendError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: front-end parameters this edge cannot honour: {str(exc)[:200]}") from None
    _check_shapes(manifest, frontend)
    try:
        selftest = np.load(io.BytesIO(blobs[SELFTEST]), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise BundleError(f"{where}: self-test input unreadable ({str(exc)[:200]})") from None
    if list(selftest.shape) != manifest["tensors"]["input_shape"] or selftest.dtype != np.int8:
        raise BundleError(f"{where}: self-test input has shape {selftest.shape} {selftest.dtype}")
    return Bundle(manifest=manifest, model_bytes=blobs[MODEL], selftest_input=selftest, key_id=signer, path=path)


def load_bundle(path: str | Path, public_key, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise BundleError(f"{p}: {size} bytes exceeds the limit of {max_bytes}")
        data = p.read_bytes()
    except OSError as exc:
        raise BundleError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    return parse_bundle(data, public_key, path=str(p), max_bytes=max_bytes)
