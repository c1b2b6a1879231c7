"""Builders of hostile inputs for the hostile suite (tests/test_hostile_*.py) and bench/faults.

Each list holds ``Case``s: a name (the pytest id), a builder that writes the
input and returns its path (or bytes, for bundles and messages), and what
must happen: ``phrase`` is a part of the one-line reason that must name the
input, ``None`` means the input is good and must be processed.

The cases are small and fast to make: audio is a few seconds at most, a
"bomb" is a few hundred KB that claims hundreds of MB.
"""
from __future__ import annotations

import base64
import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "edge" / "demo" / "XC344036_20161110_130000.ogg"  # credited in edge/demo/CREDITS.md
SR = 32000


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable
    phrase: Optional[str]  # in the one-line reason; None: a good input, processed

    def __repr__(self) -> str:
        return self.name


# -- audio ------------------------------------------------------------------------
def wav_bytes(*, channels=1, rate=SR, bits=16, frames=SR, fmt=1, data=None, data_size=None, chunks=b"") -> bytes:
    """A RIFF/WAVE file whose header may lie (sizes, channels, rate) about its data; ``chunks`` (raw) go
    between the format and the data chunk (metadata: GUANO, LIST/INFO)."""
    align = channels * bits // 8
    if data is None:
        data = (np.random.default_rng(0).standard_normal(frames * channels) * 1000).astype("<i2").tobytes()
    size = len(data) if data_size is None else data_size
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels & 0xFFFF, rate & 0xFFFFFFFF, (rate * align) & 0xFFFFFFFF,
                            align & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + chunks + b"data" + \
        struct.pack("<I", size & 0xFFFFFFFF)
    return b"RIFF" + struct.pack("<I", (len(body) + size) & 0xFFFFFFFF) + body + data


def riff_chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def audiomoth_comment(text: str) -> bytes:
    """A LIST/INFO chunk holding an ICMT comment, as AudioMoth firmware writes it."""
    return riff_chunk(b"LIST", b"INFO" + riff_chunk(b"ICMT", text.encode() + b"\0"))


_AM = "Recorded at {} by AudioMoth 24F3190361DA0A44 at medium gain while battery was greater than 4.9V."


def float_wav(samples: np.ndarray, path: Path) -> Path:
    sf.write(str(path), np.asarray(samples, np.float32), SR, subtype="FLOAT")
    return path


def noise(seconds: float, level: float = 0.05, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * level).astype(np.float32)


def _with_nonfinite(value: float, seconds: float = 8.0) -> np.ndarray:
    x = noise(seconds)
    x[SR * 2 : SR * 3] = value
    x[SR * 5 + 17] = value
    return x


def _demo_slice(seconds: float) -> np.ndarray:
    x, rate = sf.read(str(DEMO), dtype="float32", frames=int(seconds * 32000), always_2d=True)
    assert rate == SR
    return x[:, 0]


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p
    return build


def _float(name: str, make: Callable[[], np.ndarray]) -> Callable[[Path], Path]:
    return lambda d: float_wav(make(), d / name)


def _truncated(name: str, fmt: str, keep: float) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        buf = io.BytesIO()
        sf.write(buf, _demo_slice(10.0), SR, format=fmt)
        p = d / name
        data = buf.getvalue()
        p.write_bytes(data[: int(len(data) * keep)])
        return p
    return build


def _good_flac(d: Path, name: str = "good.flac", seconds: float = 10.0) -> Path:
    p = d / name
    buf = io.BytesIO()
    sf.write(buf, _demo_slice(seconds), SR, format="FLAC")
    p.write_bytes(buf.getvalue())  # pathlib writes any name, UTF-8 or not
    return p


#: crafted audio files (every one in one directory, replayed in one run)
AUDIO_CASES = [
    Case("empty wav", _write("empty.wav", b""), "empty file"),
    Case("header-only wav", _write("header_only.wav", wav_bytes(frames=0, data=b"")), "empty audio"),
    Case("wav header promising more", _write("truncated.wav", wav_bytes(frames=SR, data_size=SR * 2 * 30)),
         "truncated"),
    Case("wav data size 4 GB", _write("datasize4g.wav", wav_bytes(frames=SR, data_size=0xFFFFFFF0)), "truncated"),
    Case("random bytes as wav", _write("garbage.wav", np.random.default_rng(1).bytes(8192)), "not an audio file"),
    Case("text as flac", _write("text.flac", b"hello world\n" * 100), "not an audio file"),
    Case("html as mp3", _write("gateway.mp3", b"<html><body>502 Bad Gateway</body></html>\n" * 50),
         "not an audio file"),
    Case("zip as wav", _write("archive.wav", b"PK\x05\x06" + b"\0" * 18), "not an audio file"),
    Case("riff avi as wav", _write("movie.wav", b"RIFF" + struct.pack("<I", 100) + b"AVI LIST" + b"\0" * 92),
         "not an audio file"),
    Case("wav with 65535 channels", _write("ch65535.wav", wav_bytes(channels=65535, frames=1, data=b"\0" * 131070)),
         "channels"),
    Case("wav with 200 channels", _write("ch200.wav", wav_bytes(channels=200, frames=64)), "200 channels"),
    Case("wav at 4 GHz", _write("rate4g.wav", wav_bytes(rate=0xFFFFFFFF)), "rate4g.wav"),
    Case("wav at 1 Hz", _write("rate1.wav", wav_bytes(rate=1, frames=100)), "sample rate of 1 Hz"),
    Case("wav with unknown format tag", _write("fmt99.wav", wav_bytes(fmt=99)), "not an audio file"),
    Case("truncated flac", _truncated("truncated.flac", "FLAC", 0.5), "truncated"),
    # recorder headers that lie: the time is ignored (file name, else replay time), the audio processed
    Case("AudioMoth comment at UTC+99", _write("am_utc99.wav", wav_bytes(
        frames=SR * 2, chunks=audiomoth_comment(_AM.format("12:00:00 01/05/2024 (UTC+99)")))), None),
    Case("AudioMoth comment in year 1", _write("am_year1.wav", wav_bytes(
        frames=SR * 2, chunks=audiomoth_comment(_AM.format("00:00:00 01/01/0001 (UTC+10)")))), None),
    Case("AudioMoth comment in year 9999", _write("am_year9999.wav", wav_bytes(
        frames=SR * 2, chunks=audiomoth_comment(_AM.format("23:00:00 31/12/9999 (UTC-10)")))), None),
    Case("GUANO header of garbage", _write("guano_garbage.wav", wav_bytes(
        frames=SR * 2, chunks=riff_chunk(b"guan", b"GUANO|Version: 1.0\nTimestamp: 99999-99-99T\xff\xfe\n"))), None),
    Case("GUANO timestamp in year 1", _write("guano_year1.wav", wav_bytes(
        frames=SR * 2, chunks=riff_chunk(b"guan", b"GUANO|Version: 1.0\nTimestamp: 0001-01-01T00:00:00+10:00\n"))),
         None),
    Case("LIST chunk cut short", _write("list_cut.wav", wav_bytes(
        frames=SR * 2, chunks=b"LIST" + struct.pack("<I", 40) + b"INFOICMT" + struct.pack("<I", 1000) + b"Rec")),
         "not an audio file"),  # libsndfile finds no data chunk after it
    Case("truncated ogg", _truncated("truncated.ogg", "OGG", 0.4), None),  # decodes what is there
    Case("float wav with NaN", _float("nan.wav", lambda: _with_nonfinite(np.nan)), None),
    Case("float wav with Inf", _float("inf.wav", lambda: _with_nonfinite(np.inf)), None),
    Case("float wav all NaN", _float("all_nan.wav", lambda: np.full(SR * 8, np.nan, np.float32)), None),
    Case("digital silence", _float("silence.wav", lambda: np.zeros(SR * 8, np.float32)), None),
    Case("constant level", _float("dc.wav", lambda: np.full(SR * 8, 0.25, np.float32)), None),
    Case("ten samples", _float("tiny.wav", lambda: noise(10 / SR)), None),
]
#: the inputs of AUDIO_CASES that must never give a detection (no signal)
NO_SIGNAL = {"all_nan.wav", "silence.wav", "dc.wav"}


# -- file-system oddities ------------------------------------------------------------
def _non_utf8_name(d: Path) -> Path:
    p = Path(os.fsdecode(bytes(d) + b"/caf\xe9_20240501_050000.flac"))
    return _good_flac(d, p.name)


def _symlink(name: str, target: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = d / name
        os.symlink(target, p)
        return p
    return build


def _fifo(d: Path) -> Path:
    p = d / "fifo.wav"
    os.mkfifo(p)
    return p


def _dir_named_wav(d: Path) -> Path:
    p = d / "folder.wav"
    p.mkdir()
    return p


def _unreadable(d: Path) -> Path:
    p = _good_flac(d, "secret.flac", 2.0)
    p.chmod(0)
    return p


def _unreadable_dir(d: Path) -> Path:
    p = d / "locked"
    p.mkdir()
    _good_flac(p, "inside.flac", 2.0)
    p.chmod(0)
    return p


def _newline_name(d: Path) -> Path:
    return _good_flac(d, "two\nlines.flac", 3.0)


def _long_name(d: Path) -> Path:
    return _good_flac(d, "x" * 240 + ".flac", 3.0)


#: file-system oddities, made in the same directory as AUDIO_CASES
FS_CASES = [
    Case("file name not UTF-8", _non_utf8_name, None),
    Case("symlink loop", _symlink("loop.wav", "loop.wav"), "too many levels of symbolic links"),
    Case("dangling symlink", _symlink("dangling.wav", "/nonexistent/x.wav"), "no such file"),
    Case("symlink to a good file", _symlink("linked.flac", "good.flac"), None),
    Case("fifo named wav", _fifo, "not a regular file (a fifo)"),
    Case("directory named wav", _dir_named_wav, None),  # walked into, holds nothing: not an error
    Case("unreadable file", _unreadable, "permission denied"),
    Case("unreadable directory", _unreadable_dir, "permission denied"),
    Case("newline in file name", _newline_name, None),
    Case("240-character file name", _long_name, None),
    Case("hidden file", _write(".hidden.wav", b"not audio"), None),  # skipped in a walk
]
NEED_NO_DAC = {"unreadable file", "unreadable directory"}  # root reads anything unless the capability is dropped


def build_tree(d: Path) -> dict[str, Path]:
    """Every audio and file-system case, plus the good file, in ``d``; case name -> path."""
    _good_flac(d)
    return {c.name: c.build(d) for c in AUDIO_CASES + FS_CASES}


# -- configurations --------------------------------------------------------------------
def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f'a0: &a0 [{", ".join(["lol"] * width)}]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _deep(n: int = 20000) -> str:
    return "device_id: " + "[" * n + "]" * n + "\n"


#: (name, text or bytes of the file, phrase); check-config and run must exit 2 with it
CONFIG_CASES = [
    Case("duplicate top-level key", "device_id: a\nlogging: {level: INFO}\ndevice_id: b\n", "'device_id' is given twice"),
    Case("duplicate nested key", "model:\n  num_threads: 1\n  num_threads: 2\n", "'num_threads' is given twice"),
    Case("duplicate key in a flow mapping", "audio: {gain_db: 1, gain_db: 2}\n", "'gain_db' is given twice"),
    Case("alias bomb", _alias_bomb(), "alias"),
    Case("many aliases", "a: &a x\nb: [" + ", ".join(["*a"] * 500) + "]\n", "aliases"),
    Case("recursive alias", "a: &a [*a]\n", "alias"),
    Case("latin-1 text", "device_id: caf\xe9\n".encode("latin-1"), "not UTF-8"),
    Case("utf-16 text", "device_id: rec\n".encode("utf-16"), "not UTF-8"),
    Case("binary garbage", np.random.default_rng(2).bytes(2048), "not UTF-8"),
    Case("nested 20000 deep", _deep(), "nested too deeply"),
    Case("two megabytes", "# " + "x" * (2 * 1024 * 1024) + "\n", "larger than"),
    Case("a megabyte in one value", "device_id: " + "x" * 900_000 + "\n", "device_id"),
    Case("a thousand unknown keys", "".join(f"key{i}: {i}\n" for i in range(1000)), "more line"),
    Case("top level is a list", "- a\n- b\n", "top level must be a mapping"),
    Case("tab indentation", "model:\n\tnum_threads: 2\n", "not valid YAML at line 2"),
    Case("unclosed bracket", "audio: [unclosed\n", "not valid YAML"),
    Case("overlap longer than the window", "model: {overlap_s: 3.5}\n", "model.overlap_s"),
    Case("overlap equal to the window", "model: {overlap_s: 3.0}\n", "model.overlap_s"),
    Case("include names an unknown species", "detection: {include: [Dodo_ineptus]}\n", "Dodo_ineptus"),
    Case("thresholds name an unknown species", "detection: {thresholds: {Dodo_ineptus: 0.5}}\n", "Dodo_ineptus"),
    Case("exclude names an unknown species", "detection: {exclude: [Dodo_ineptus]}\n", "Dodo_ineptus"),
    Case("event rule longer than any bundle's", "detection: {min_windows: 11}\n", "detection.min_windows"),
]
#: the problems only the model can reveal (check-config must load the bundle for these)
NEEDS_BUNDLE = {"overlap longer than the window", "overlap equal to the window", "include names an unknown species",
                "thresholds name an unknown species", "exclude names an unknown species"}


def write_config(d: Path, case: Case, state: Path) -> Path:
    """The case's file; a config that is otherwise good keeps its state in ``state``."""
    body = case.build
    p = d / (case.name.replace(" ", "_") + ".yaml")
    if isinstance(body, bytes):
        p.write_bytes(body)
    else:
        if case.name in NEEDS_BUNDLE:
            body = f"state_dir: {state}\nstore: {{path: {state / 'detections.db'}}}\n" + body
        p.write_text(body)
    return p


# -- bundles ------------------------------------------------------------------------------
def zip_members(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP with the members in order (names may repeat)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, blob in members:
            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")  # "Duplicate name" is the point
                zf.writestr(name, blob)
    return buf.getvalue()


def deflate_bomb(name: str, inflated: int, extra: list[tuple[str, bytes]] = ()) -> bytes:
    """A ZIP whose member ``name`` inflates ``inflated`` zero bytes from a few hundred KB (streamed: no big buffer)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, blob in extra:
            zf.writestr(n, blob)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        chunk = bytes(1 << 20)
        with zf.open(info, "w", force_zip64=inflated > 0x7FFFFFFF) as f:
            for _ in range(inflated // len(chunk)):
                f.write(chunk)
    return buf.getvalue()


def lying_size(data: bytes, name: str, claimed: int) -> bytes:
    """Patch the sizes the archive declares for ``name`` (local header and central directory) to ``claimed``."""
    b = bytearray(data)
    enc = name.encode()
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := b.find(sig, at)) >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if b[name_at : name_at + len(enc)] == enc:
                b[at + size_at : at + size_at + 4] = struct.pack("<I", claimed)
            at += 4
    return bytes(b)


def sign_manifest(manifest_bytes: bytes, private_key) -> bytes:
    from edge.contract.signing import key_id

    return json.dumps({"algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
                       "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode()}).encode()


def bundle_cases(good: bytes, private_key) -> list[Case]:
    """Hostile bundles made from a good one; ``build()`` returns the bytes."""
    from bundle_tools import members as unzip
    from edge.contract import bundle as B

    parts = unzip(good)
    manifest = json.loads(parts[B.MANIFEST])

    def signed(mutate=None, *, raw: bytes | None = None, extra=(), drop=()) -> Callable[[], bytes]:
        def build() -> bytes:
            m = json.loads(json.dumps(manifest))
            if mutate:
                mutate(m)
            mb = raw if raw is not None else json.dumps(m, indent=1, sort_keys=True).encode()
            out = [(B.MANIFEST, mb), (B.SIGNATURE, sign_manifest(mb, private_key))]
            out += [(n, parts[n]) for n in (B.MODEL, B.SELFTEST) if n not in drop]
            return zip_members(out + list(extra))
        return build

    def setter(path: str, value):
        def mutate(m):
            *head, last = path.split(".")
            node = m
            for k in head:
                node = node[k]
            node[last] = value
        return mutate

    def pin(name: str, blob: bytes):
        return lambda m: m["members"].__setitem__(name, {"sha256": B.sha256_hex(blob), "size": len(blob)})

    sig = parts[B.SIGNATURE]
    base = [(B.MANIFEST, parts[B.MANIFEST]), (B.MODEL, parts[B.MODEL]), (B.SELFTEST, parts[B.SELFTEST])]
    cases = [
        # cheap refusals before any signature: bounded memory whatever the archive claims
        Case("deflate bomb of 512 MB", lambda: deflate_bomb(B.MODEL, 512 << 20, [(B.MANIFEST, parts[B.MANIFEST]),
                                                                                (B.SIGNATURE, sig)]), "over the limit"),
        Case("deflate bomb within the size limit", lambda: deflate_bomb(B.MODEL, 6 << 20, [(B.MANIFEST, parts[B.MANIFEST]),
                                                                                           (B.SIGNATURE, sig)]),
             "compression bomb"),
        Case("manifest bomb with a lying size", lambda: lying_size(deflate_bomb(B.MANIFEST, 24 << 20, [(B.SIGNATURE, sig)]),
                                                                   B.MANIFEST, 1000), "manifest.json"),
        Case("20000 members declared", lambda: zip_members(base + [(B.SIGNATURE, sig)])[:-22] + b"PK\x05\x06" +
             struct.pack("<HHHHIIH", 0, 0, 20000, 20000, 0, 0, 0), "members declared"),
        Case("ZIP64 entry count", lambda: zip_members(base + [(B.SIGNATURE, sig)])[:-22] + b"PK\x05\x06" +
             struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0), "ZIP64"),
        Case("twenty members", lambda: zip_members(base + [(B.SIGNATURE, sig)] + [(f"x{i}", b"") for i in range(20)]),
             "members"),
        Case("duplicate manifest member", lambda: zip_members(base + [(B.SIGNATURE, sig), (B.MANIFEST, b"{}")]),
             "duplicate member"),
        Case("duplicate model member", lambda: zip_members(base + [(B.SIGNATURE, sig), (B.MODEL, b"evil")]),
             "duplicate member"),
        Case("bzip2 member", lambda: zip_members(base + [(B.SIGNATURE, sig)], zipfile.ZIP_BZIP2), "compression method"),
        Case("signature record 1 MB", lambda: zip_members(base + [(B.SIGNATURE, b"[" * (1 << 20))]), "signature.json"),
        Case("signature nested JSON", lambda: zip_members(base + [(B.SIGNATURE, b"[" * 3000 + b"]" * 3000)]),
             "signature"),
        Case("signature not base64", lambda: zip_members(base + [(B.SIGNATURE, b'{"algorithm": "ed25519", '
                                                                                b'"signature": "***"}')]), "signature"),
        Case("signature record is a list", lambda: zip_members(base + [(B.SIGNATURE, b"[1, 2]")]), "signature"),
        Case("signature algorithm is a number", lambda: zip_members(base + [(B.SIGNATURE, json.dumps({
            "algorithm": 5, "signature": json.loads(sig)["signature"]}).encode())]), "algorithm"),
        Case("empty archive", lambda: zip_members([]), "unsigned"),
        # signed with the team key, but wrong
        Case("unpinned extra member", signed(extra=[("payload.sh", b"#!/bin/sh\nrm -rf /\n")]), "not pinned"),
        Case("pinned member missing", signed(pin("labels.txt", b"x")), "missing member"),
        Case("member name with a path", signed(pin("../../etc/passwd", b"x")), "members"),
        Case("hop is a string", signed(setter("hop_s", "1.5")), "hop_s"),
        Case("hop is NaN", signed(raw=json.dumps({**manifest, "hop_s": float("nan")}).encode()), "hop_s"),
        Case("hop is a boolean", signed(setter("hop_s", True)), "hop_s"),
        Case("thresholds are a list", signed(setter("thresholds", [0.5])), "thresholds"),
        Case("a threshold is a string", signed(lambda m: m["thresholds"].update(
            {next(iter(m["thresholds"])): "high"})), "thresholds"),
        Case("version is a number", signed(setter("version", 2024.11)), "version"),
        Case("name is null", signed(setter("name", None)), "name"),
        Case("labels are a mapping", signed(setter("labels", {"a": 1})), "labels"),
        Case("a label is a number", signed(lambda m: m["labels"].append(7)), "label entry"),
        Case("frontend is a list", signed(setter("frontend", [1, 2])), "frontend"),
        Case("frontend sample rate is a string", signed(setter("frontend.sample_rate", "32000")), "front-end"),
        Case("tensors input shape is a string", signed(setter("tensors.input_shape", "1x128")), "input_shape"),
        Case("selftest output is a string", signed(setter("selftest.output", "none")), "selftest.output"),
        Case("members is a list", signed(setter("members", [])), "members"),
        Case("metrics is a list", signed(setter("metrics", [])), "metrics"),
        Case("format version is a string", signed(setter("format_version", "1")), "format version"),
        Case("manifest is a list", signed(raw=b"[]"), "not a JSON object"),
        Case("manifest is not JSON", signed(raw=b"\xff\xfe not json"), "not JSON"),
        Case("manifest nested 100000 deep", signed(raw=b"[" * 100000 + b"]" * 100000), "not JSON"),
        Case("manifest over 1 MB", signed(raw=b" " * (2 << 20) + b"{}"), "manifest.json"),
    ]
    return cases


# -- MQTT messages -------------------------------------------------------------------------
def message_cases(good: bytes, private_key) -> list[Case]:
    """Payloads for the model topics: every bundle case, plus messages that are no bundle at all."""
    extra = [
        Case("empty message", lambda: b"", "not a bundle"),
        Case("JSON message", lambda: json.dumps({"version": "9.9", "url": "http://evil/x"}).encode(), "not a bundle"),
        Case("one zero byte", lambda: b"\0", "not a bundle"),
        Case("truncated bundle", lambda: good[: len(good) // 2], "not a bundle"),
    ]
    return extra + bundle_cases(good, private_key)
