"""FLAC decoded by dr_flac (the compiled module of the ``miniaudio`` package), when it is installed.

libsndfile's FLAC decoder (the one in the ``soundfile`` wheel) is the
largest cost of a replay after the model: 0.6 ms per second of 48 kHz
audio, against 0.34 ms for dr_flac on the same files, which give the same
samples bit for bit (both are lossless decoders of the same stream; dr_flac
seeks to the exact sample too, ``tests/test_sources_file.py``). ``FileSource``
still opens every file with libsndfile (the header, the checks, every other
format) and reads FLAC through this module when it can: 16- and 24-bit
FLAC, with miniaudio importable (wheels for x86-64 only: elsewhere, on a
Raspberry Pi, libsndfile decodes as before). Only the compiled module is
imported (``_miniaudio``: 0.3 MB resident), not miniaudio's Python API.
A file that starts like FLAC is opened by dr_flac alone (``open_file``:
its header gives the rate, channels, length and sample size), so a worker
that only reads FLAC never loads libsndfile (2 MB of its memory); anything
dr_flac does not open that way goes to libsndfile, which decodes it or
refuses it with its reason.

Samples come as integers, as libsndfile's integer reads give them (16-bit
as int16, 24-bit left-justified in int32), into one buffer reused from
block to block. One difference: where a frame fails its checksum dr_flac
skips it and goes on, where libsndfile stops; ``FileSource`` refuses such a
file at its end, when fewer samples came than the header declares.
"""
from __future__ import annotations

import os
from pathlib import Path

from typing import Any, Callable

import numpy as np

_ffi: Any = None
_lib: Any = None
try:
    import _miniaudio  # miniaudio's cffi module: dr_flac and friends

    _ffi, _lib = _miniaudio.ffi, _miniaudio.lib
except ImportError:  # not installed (no wheel for this machine): libsndfile decodes FLAC
    pass

_FN: dict[str, Callable[..., Any]] = {}
if _lib is not None:  # dr_flac's functions are ma_dr_flac_* in miniaudio >= 0.11.22, drflac_* before
    for _name in ("open_file", "close", "seek_to_pcm_frame", "read_pcm_frames_s16", "read_pcm_frames_s32"):
        _fn = getattr(_lib, f"ma_dr_flac_{_name}", None) or getattr(_lib, f"drflac_{_name}", None)
        if _fn is None:
            _FN = {}
            break
        _FN[_name] = _fn

#: libsndfile subtypes read here, and how: (numpy dtype, dr_flac reader)
SUBTYPES = {"PCM_16": ("int16", "read_pcm_frames_s16"), "PCM_24": ("int32", "read_pcm_frames_s32")}


def available() -> bool:
    return bool(_FN)


class FlacReader:
    """One open FLAC file: ``seek(frame)``, ``read(n)`` -> (frames, channels) integers."""

    def __init__(self, handle, channels: int, subtype: str):
        self._h = handle
        self.channels = int(channels)
        dtype, reader = SUBTYPES[subtype]
        self.dtype = np.dtype(dtype)
        self._read = _FN[reader]
        self._ctype = "ma_dr_flac_int16 *" if self.dtype == np.int16 else "ma_dr_flac_int32 *"
        self._buf = np.empty(0, self.dtype)
        self._ptr = None
        self.sample_rate, self.frames, self.subtype = 0, 0, subtype  # the header's (open_file)

    def seek(self, frame: int) -> None:
        if not _FN["seek_to_pcm_frame"](self._h, int(frame)):
            raise OSError(f"cannot seek to sample {frame}")

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` frames, shape (n, channels): a view of a buffer the next read overwrites."""
        need = int(frames) * self.channels
        if len(self._buf) < need:
            self._buf = np.empty(need, self.dtype)
            try:
                self._ptr = _ffi.cast(self._ctype, _ffi.from_buffer(self._buf))
            except TypeError:  # miniaudio before 0.11.22 names the types drflac_int16/32
                self._ptr = _ffi.cast(self._ctype.replace("ma_dr_flac_", "drflac_"), _ffi.from_buffer(self._buf))
        n = int(self._read(self._h, int(frames), self._ptr))
        return self._buf[: n * self.channels].reshape(n, self.channels)

    def close(self) -> None:
        if self._h is not None:
            _FN["close"](self._h)
            self._h = None

    def __del__(self) -> None:  # a source dropped unread (as libsndfile's SoundFile closes itself)
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone
            pass


#: dr_flac's sample sizes read here, as libsndfile's subtypes
BITS = {16: "PCM_16", 24: "PCM_24"}


def open_file(path: str | Path) -> FlacReader | None:
    """``path`` opened by dr_flac alone, with its header's values (``sample_rate``, ``channels``, ``frames``,
    ``subtype``), or None: dr_flac not installed, not a FLAC stream it opens, a sample size it is not used
    for, or no total length in the header (libsndfile then opens the file, and refuses it with its reason)."""
    if not _FN:
        return None
    handle = _FN["open_file"](os.fsencode(path), _ffi.NULL)
    if not handle:
        return None
    subtype = BITS.get(int(handle.bitsPerSample))
    frames = int(handle.totalPCMFrameCount)
    if subtype is None or frames <= 0 or int(handle.channels) <= 0:
        _FN["close"](handle)
        return None
    reader = FlacReader(handle, int(handle.channels), subtype)
    reader.sample_rate, reader.frames, reader.subtype = int(handle.sampleRate), frames, subtype
    return reader


def open_flac(path: str | Path, subtype: str, channels: int) -> FlacReader | None:
    """A dr_flac reader for ``path`` (already opened by libsndfile as FLAC of ``subtype``), or None:
    dr_flac not installed, a subtype it is not used for, or a file it cannot open."""
    if not _FN or subtype not in SUBTYPES:
        return None
    handle = _FN["open_file"](os.fsencode(path), _ffi.NULL)
    if not handle:
        return None
    return FlacReader(handle, channels, subtype)
