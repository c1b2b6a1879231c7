"""Audio files as an AudioSource: decode, pick or mix channels, resample, stream.

Anything libsndfile reads (WAV 8/16/24/32-bit integer and 32/64-bit float,
FLAC, OGG Vorbis/Opus, MP3, AIFF, W64, RF64) at any rate and channel count;
16- and 24-bit FLAC through dr_flac where it is installed (``edge.sources.flac``:
the same samples, 1.8x faster). The file is read in blocks, so memory stays
flat however long it is.

The recording's start time comes, in order, from the caller (config or
command line), from the recorder's header (GUANO, AudioMoth comment), from
the file name (``YYYYMMDD_HHMMSS`` as written by AudioMoth, Song Meter and
most recorders, with or without a prefix; or the 8-hex-digit Unix time of
early AudioMoth firmware), else from the replay time; ``time_source`` says
which (``edge.sources.metadata``). Local times (file names, GUANO without an
offset) are taken in ``timezone`` if given, else as UTC (AudioMoth's default).

A file that cannot be used raises ``SourceError`` naming the file and the
problem: unreadable (permission denied, a symlink loop), not a regular file
(a fifo, a device), not audio, empty, truncated (header promises more than
the file holds), a header that declares more channels or a higher rate than
any recorder makes, or undecodable part-way. File names that are not valid
UTF-8 are shown (and stored) with their odd bytes escaped (``caf\xe9.wav``).
"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from edge.types import AudioBlock, AudioSource
from edge.contract.resample import FileResampler

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".w64", ".rf64", ".caf"}
)

#: seconds a replay decodes at a time (the results do not depend on it): 3 % less CPU than 4 s, 9 % less than
#: 2 s (fewer, longer front-end calls and per-block steps), for about 5 MB more at the peak
REPLAY_BLOCK_S = 8.0
MAX_CHANNELS = 64  # a header declaring more is refused (a block of it would not fit in memory)
MIN_FILE_RATE, MAX_FILE_RATE = 1000, 768_000


class SourceError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def display_path(path: str | Path) -> str:
    """A path as printable, storable, one-line text: bytes that are not UTF-8 and control
    characters (a newline in a name) escaped (``caf\\xe9.wav``, ``two\\x0alines.wav``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(_CONTROL)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False


def check_readable(path: Path) -> None:
    """SourceError unless ``path`` is a regular file this process can open (never blocks on a fifo)."""
    where = display_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"cannot read {where}: {(exc.strerror or str(exc)).lower()}") from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a fifo" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special"
        raise SourceError(f"{where}: not a regular file ({kind})")


def start_time_from_name(path: str | Path, zone: str | None = None) -> datetime | None:
    """Recording start (UTC) from a file name (local times in ``zone``, default UTC), or None."""
    from edge.sources.metadata import localize, load_zone, time_from_name

    found = time_from_name(path)
    if found is None:
        return None
    when, naive = found
    return localize(when, load_zone(zone), Path(path).name)[0] if naive else when


def find_audio_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand paths (files and directories, walked recursively, sorted) into audio files.

    Returns (files, problems): a named file is kept whatever its extension (it
    is refused later if it is not audio, with the reason); missing paths and
    directories that cannot be read become problems. Symbolic links to
    directories are not followed inside a walk (no loops); a link that cannot
    be followed is kept, to be refused by name.
    """
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def unreadable(exc: OSError) -> None:
        problems.append((Path(exc.filename), f"cannot read directory: {(exc.strerror or str(exc)).lower()}"))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = []
            for root, dirs, names in os.walk(p, onerror=unreadable):
                dirs.sort()
                found += [Path(root) / n for n in sorted(names)
                          if Path(n).suffix.lower() in AUDIO_EXTENSIONS and not n.startswith(".")]
            if not found:
                problems.append((p, "directory holds no audio files"))
            files += found
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            problems.append((p, "no such file or directory"))
    return files, problems


class _Grid:
    """Resampled samples, handed on in parts that end on multiples of ``size`` samples from the file's start.

    The resampler's output comes in pieces whose sizes depend on how the input was read; cut on this grid,
    a file's blocks (their offsets and times, which windows' times count from) are the same whether the
    whole file is read or a piece of it, and whatever the decoder's block."""

    def __init__(self, size: int):
        self.size = size
        self._held: list[np.ndarray] = []
        self._n = 0
        self._pos = 0  # file position of the first sample held

    def add(self, x: np.ndarray, pos: int) -> None:
        if len(x):
            if not self._n:
                self._pos = pos
            self._held.append(x)
            self._n += len(x)

    def parts(self, last: bool) -> Iterator[tuple[int, np.ndarray]]:
        """(file position, samples) of every part complete (with ``last``: and the rest)."""
        while self._n:
            n = self.size - self._pos % self.size
            if self._n < n:
                if not last:
                    return
                n = self._n
            take, k = [], 0
            while k < n:  # the pieces that make the part (one copy if more than one)
                h = self._held[0]
                if len(h) <= n - k:
                    take.append(self._held.pop(0))
                    k += len(h)
                else:
                    take.append(h[: n - k])
                    self._held[0] = h[n - k :]
                    k = n
            part = take[0] if len(take) == 1 else np.concatenate(take)
            pos = self._pos
            self._pos += n
            self._n -= n
            yield pos, part


class FileSource(AudioSource):
    """Streams one audio file as mono float32 blocks at ``sample_rate``."""

    def __init__(
        self,
        path: str | Path,
        sample_rate: int,
        *,
        channel: int | None = None,
        start_utc: datetime | None = None,
        block_s: float = 4.0,
        now: datetime | None = None,
        timezone: str | None = None,
        span: tuple[int, int | None] | None = None,
    ):
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.channel = channel
        self.block_s = float(block_s)
        self.span = span  # (first, end) output samples: one piece of a file split over processes
        where = display_path(self.path)
        check_readable(self.path)
        self.name = display_path(self.path.resolve())
        if self.path.stat().st_size == 0:
            raise SourceError(f"{where}: empty file (0 bytes)")
        self._sf: Any = None
        self._flac: Any = None  # FLAC through dr_flac where it is installed (edge.sources.flac): 1.8x faster
        if _starts_with(self.path, b"fLaC"):
            from edge.sources.flac import open_file

            self._flac = open_file(self.path)
        if self._flac is not None:  # its header from dr_flac: libsndfile is not loaded
            self.file_rate, self.channels, self.frames = self._flac.sample_rate, self._flac.channels, self._flac.frames
            subtype = self._flac.subtype
            self.format = f"FLAC/{subtype}"
        else:
            import soundfile as sf

            try:
                self._sf = sf.SoundFile(os.fsencode(self.path))
            except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
                reason = str(exc).split(": ", 1)[-1] if ":" in str(exc) else str(exc)
                raise SourceError(f"{where}: not an audio file that can be decoded ({reason})") from None
            self.file_rate = int(self._sf.samplerate)
            self.channels = int(self._sf.channels)
            self.frames = int(self._sf.frames)
            subtype = self._sf.subtype
            self.format = f"{self._sf.format}/{subtype}"
        # 16/24/32-bit integer PCM is read as integers and scaled here: libsndfile's own conversion
        # to float costs 6x more than the decoding of a WAV file
        self._scale: np.float32 | None
        self._dtype, self._scale = {"PCM_16": ("int16", np.float32(2.0**-15)), "PCM_24": ("int32", np.float32(2.0**-31)),
                                    "PCM_32": ("int32", np.float32(2.0**-31))}.get(subtype, ("float32", None))
        try:
            if self.frames <= 0:
                raise SourceError(f"{where}: empty audio (no samples; {self.format}, header only?)")
            if not MIN_FILE_RATE <= self.file_rate <= MAX_FILE_RATE:
                raise SourceError(f"{where}: header declares a sample rate of {self.file_rate} Hz "
                                  f"(allowed {MIN_FILE_RATE}..{MAX_FILE_RATE})")
            if not 0 < self.channels <= MAX_CHANNELS:
                raise SourceError(f"{where}: header declares {self.channels} channels (allowed up to {MAX_CHANNELS})")
            info = (self._sf.extra_info or "") if self._sf is not None else ""
            if re.search(r"^data\s*:.*should be", info, re.M):
                raise SourceError(
                    f"{where}: truncated ({self.format}: the header promises more audio than the file holds; "
                    f"{self.frames / self.file_rate:.1f} s readable)"
                )
            if channel is not None and not 0 <= channel < self.channels:
                raise SourceError(f"{where}: channel {channel} requested but the file has {self.channels}")
        except SourceError:
            self.close()
            raise
        if self._sf is not None and self._sf.format == "FLAC":  # libsndfile opened it: dr_flac may still read it
            from edge.sources.flac import open_flac

            self._flac = open_flac(self.path, subtype, self.channels)
        self.zone = "UTC"
        if start_utc is not None:
            self.start_utc, self.time_source = start_utc.astimezone(UTC), "config"
        else:
            from edge.sources.metadata import TimeZoneError, recording_start

            try:
                found = recording_start(self.path, timezone)
            except TimeZoneError as exc:
                self.close()
                raise SourceError(f"{where}: {exc}") from None
            if found is not None:
                self.start_utc, self.time_source, self.zone = found.start_utc, found.source, found.zone
            else:
                self.start_utc, self.time_source = (now or datetime.now(UTC)), "replay-time"

    @property
    def duration_s(self) -> float:
        return self.frames / self.file_rate

    def _float(self, data: np.ndarray) -> np.ndarray:
        """Integer samples as libsndfile's float32 would give them (exactly: a power-of-two scale)."""
        if self._scale is None:
            return np.ascontiguousarray(data)
        out = data.astype(np.float32)  # (a contiguous cast, then an in-place product: faster than one
        out *= self._scale              # np.multiply(..., dtype=float32), which casts through a buffer)
        return out

    def _mono(self, data: np.ndarray) -> np.ndarray:
        if data.shape[1] == 1:
            return self._float(data[:, 0])
        if self.channel is not None:
            return self._float(data[:, self.channel])
        return self._float(data).mean(axis=1, dtype=np.float32)

    @property
    def output_samples(self) -> int:
        """Samples the whole file gives at ``sample_rate``."""
        return self.frames if self.file_rate == self.sample_rate else round(self.frames * self.sample_rate / self.file_rate)

    def blocks(self, stop: threading.Event | None = None) -> Iterator[AudioBlock]:
        """Yield blocks of about ``block_s`` seconds; SourceError if decoding fails part-way.

        With ``span=(first, end)``: only output samples ``first`` to ``end`` (None: the end of the file),
        bit for bit as the whole file gives them, with their offsets and times in the whole file.
        """
        where = display_path(self.path)
        first, end = self.span or (0, None)
        resampler = None
        in_pos = out_pos = first  # input frames read, output samples produced (whole-file positions)
        if self.file_rate != self.sample_rate:
            block = FileResampler(self.file_rate, self.sample_rate).block_of_output(first)
            resampler = FileResampler(self.file_rate, self.sample_rate, start_block=block)
            in_pos, out_pos = resampler.input_start(block), resampler.output_start(block)
        block_frames = max(1, int(self.block_s * self.file_rate))
        out_frames = max(1, int(self.block_s * self.sample_rate))
        grid = _Grid(out_frames)
        eof = False
        try:
            if in_pos:
                try:
                    (self._flac or self._sf).seek(in_pos)
                except Exception as exc:
                    raise SourceError(f"{where}: cannot seek to {in_pos / self.file_rate:.1f} s ({exc})") from None
            while stop is None or not stop.is_set():
                try:
                    data = self._flac.read(block_frames) if self._flac is not None else \
                        self._sf.read(block_frames, dtype=self._dtype, always_2d=True)
                except Exception as exc:  # libsndfile/mpg123 errors surface as various types
                    raise SourceError(f"{where}: undecodable at {in_pos / self.file_rate:.1f} s ({exc})") from None
                eof = len(data) < block_frames
                in_pos += len(data)
                mono = self._mono(data) if len(data) else np.zeros(0, np.float32)
                if resampler is None:
                    lo = max(0, first - out_pos)
                    hi = len(mono) if end is None else max(lo, min(len(mono), end - out_pos))
                    for i in range(lo, hi, out_frames):
                        part = mono[i : min(i + out_frames, hi)]
                        offset = (out_pos + i) / self.sample_rate
                        yield AudioBlock(part, self.start_utc + timedelta(seconds=offset), offset)
                    out_pos += len(mono)
                    last = eof or (end is not None and out_pos >= end)
                else:  # the resampler's output, cut on a grid of out_frames from the file's start
                    pieces = resampler.process_parts(mono)
                    if eof:
                        pieces.append(resampler.flush())
                    for y in pieces:
                        lo = max(0, first - out_pos)
                        hi = len(y) if end is None else max(lo, min(len(y), end - out_pos))
                        grid.add(y[lo:hi], out_pos + lo)
                        out_pos += len(y)
                    last = eof or (end is not None and out_pos >= end)
                    for pos, part in grid.parts(last):
                        offset = pos / self.sample_rate
                        yield AudioBlock(part, self.start_utc + timedelta(seconds=offset), offset)
                if last:
                    break
        finally:
            self.close()
        ended = eof and (stop is None or not stop.is_set())  # the whole file was read, not stopped early
        if ended and in_pos < self.frames * 0.99:
            raise SourceError(
                f"{where}: truncated ({self.format}: {in_pos / self.file_rate:.1f} s decoded of "
                f"{self.duration_s:.1f} s the header declares)"
            )
        if ended and self._flac is not None and in_pos < self.frames:
            raise SourceError(f"{where}: damaged ({self.format}: {self.frames - in_pos} samples fewer than the "
                              "header declares: frames that failed their checksum were skipped)")

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "time_source": self.time_source, "replay": True, "format": self.format,
                "capture_rate": self.file_rate, "resampled": self.file_rate != self.sample_rate,
                "channels": self.channels, "channel": self.channel}

    def close(self) -> None:
        if self._sf is not None and not self._sf.closed:
            self._sf.close()
        if self._flac is not None:
            self._flac.close()

    def __repr__(self) -> str:
        return f"FileSource({self.path}, {self.file_rate} Hz x{self.channels} -> {self.sample_rate} Hz)"
