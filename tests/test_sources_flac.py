"""FLAC through dr_flac (edge.sources.flac): the samples libsndfile gives, pieces included; damage refused."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import soundfile as sf

from edge.sources import FileSource, SourceError
from edge.sources import flac

SR = 32000
pytestmark = pytest.mark.skipif(not flac.available(), reason="miniaudio (dr_flac) not installed")


def _noise(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)


def _samples(path, *, dr_flac: bool, **kw) -> tuple[np.ndarray, list[float]]:
    if dr_flac:
        src = FileSource(path, SR, **kw)
        assert src._flac is not None and src._sf is None  # dr_flac alone opened it
    else:  # libsndfile opens and reads it, as on a machine without miniaudio
        saved = flac._FN.copy()
        flac._FN.clear()
        try:
            src = FileSource(path, SR, **kw)
        finally:
            flac._FN.update(saved)
        assert src._flac is None and src._sf is not None
    blocks = list(src.blocks(threading.Event()))
    return np.concatenate([b.samples for b in blocks]), [b.offset_s for b in blocks]


@pytest.mark.parametrize("subtype,rate,channels", [("PCM_16", 48000, 1), ("PCM_16", 32000, 2), ("PCM_24", 44100, 2)])
def test_dr_flac_gives_libsndfiles_samples_whole_and_in_pieces(tmp_path, subtype, rate, channels):
    path = tmp_path / "a.flac"
    sf.write(path, _noise(23.0, rate, channels), rate, format="FLAC", subtype=subtype)
    ref, ref_offsets = _samples(path, dr_flac=False)
    got, offsets = _samples(path, dr_flac=True)
    assert got.dtype == np.float32 and len(got) == len(ref) > 0
    np.testing.assert_array_equal(got, ref)
    assert offsets == ref_offsets
    for span in [(7 * SR + 123, 15 * SR), (12 * SR, None)]:  # a piece seeks into the file (resampler blocks too)
        piece, _ = _samples(path, dr_flac=True, span=span)
        np.testing.assert_array_equal(piece, ref[span[0] : span[1]])


def test_a_flac_frame_that_fails_its_checksum_is_refused(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, _noise(10.0, 48000, 1), 48000, format="FLAC")
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0x55
    path = tmp_path / "damaged.flac"
    path.write_bytes(bytes(data))
    src = FileSource(path, SR)
    with pytest.raises(SourceError, match=r"damaged\.flac: damaged \(FLAC/PCM_16: \d+ samples fewer"):
        list(src.blocks(threading.Event()))


def test_a_source_dropped_unread_closes_its_decoder(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, _noise(2.0, 48000, 1), 48000, format="FLAC")
    fds = lambda: len(__import__("os").listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    for _ in range(20):
        src = FileSource(path, SR)
        assert src._flac is not None
        del src
    assert fds() <= before + 1


def test_a_worker_reading_flac_never_loads_libsndfile(tmp_path):
    """FLAC is opened by dr_flac alone (its header gives rate, channels, length): libsndfile stays out of a
    cluster worker that reads FLAC (2 MB of its memory); the header's values are libsndfile's."""
    import subprocess
    import sys

    path = tmp_path / "a.flac"
    sf.write(path, _noise(3.0, 44100, 2), 44100, format="FLAC", subtype="PCM_24")
    code = ("import sys, threading; from edge.sources import FileSource; "
            f"s = FileSource({str(path)!r}, 32000); print(s.file_rate, s.channels, s.frames, s.format); "
            "n = sum(len(b.samples) for b in s.blocks(threading.Event())); "
            "print(n, 'soundfile' in sys.modules, '_soundfile' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    info = sf.info(str(path))
    assert out[:4] == [str(info.samplerate), str(info.channels), str(info.frames), "FLAC/PCM_24"]
    assert out[4:] == [str(round(info.frames * 32000 / 44100)), "False", "False"]


def test_a_file_dr_flac_cannot_open_goes_to_libsndfile(tmp_path):
    """A file that starts like FLAC but is not one is refused by libsndfile with its reason."""
    path = tmp_path / "fake.flac"
    path.write_bytes(b"fLaC" + bytes(200))
    with pytest.raises(SourceError, match=r"fake\.flac: not an audio file that can be decoded"):
        FileSource(path, SR)
