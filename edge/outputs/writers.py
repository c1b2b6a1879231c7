"""Detection output formats for replay: a readable table, CSV, JSON, Raven selection tables.

Each writer is a DetectionSink with ``begin_source(path)`` / ``end_source()``
around each file's detections. ``table``, ``csv`` and ``json`` write to one
stream (standard output or ``--out FILE``); ``raven`` writes one selection
table per source file into a directory (``--out DIR``, default the current
one) named ``<stem>.dawnchorus.selection.table.txt``, tab-separated with
Raven's columns, like BirdNET-Analyzer's ``.BirdNET.selection.table.txt``:
its twelve columns in its order, then ours (mean confidence, windows, UTC
start). As BirdNET-Analyzer does, the tables mirror the input folders:
a recording's table goes to the same relative folder under the output
directory as the recording under the inputs' common folder, so
``SD1/20240501_050000.WAV`` and ``SD2/20240501_050000.WAV`` get two tables.
A table is never overwritten within one run: a name already written gets
``.2``, ``.3``... before the suffix.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Callable, Sequence

from edge.contract.record import DETECTION_FIELDS, Detection
from edge.types import DetectionSink

log = logging.getLogger(__name__)

FORMATS = ("table", "csv", "json", "raven")

#: Raven column -> the record's field it shows (None: the table's own: selection number, view, channel, band);
#: BirdNET-Analyzer's twelve, in its order, then ours
RAVEN_FIELDS: dict[str, str | None] = {
    "Selection": None, "View": None, "Channel": None, "Begin Time (s)": "offset_s", "End Time (s)": "end_offset_s",
    "Low Freq (Hz)": None, "High Freq (Hz)": None, "Common Name": "common_name", "Species Code": "label",
    "Confidence": "score", "Begin Path": "source", "File Offset (s)": "offset_s",
    "Mean Confidence": "mean_score", "Windows": "n_windows", "Begin Date Time (UTC)": "start_utc",
}
RAVEN_COLUMNS = tuple(RAVEN_FIELDS)
_RAVEN_FORMATS = {"offset_s": "{:.3f}", "end_offset_s": "{:.3f}", "score": "{:.4f}", "mean_score": "{:.4f}"}


class Writer(DetectionSink):
    """An output format: a ``DetectionSink`` told where each source begins and ends."""


class _StreamWriter(Writer):
    def __init__(self, out: IO[str] | None = None):
        self.out = out or sys.stdout

    def close(self) -> None:
        self.out.flush()
        if self.out not in (sys.stdout, sys.stderr):
            self.out.close()


class TableWriter(_StreamWriter):
    """Aligned, human-readable rows sorted by time, a heading per file (printed when the file is done)."""

    def __init__(self, out: IO[str] | None = None):
        super().__init__(out)
        self._source: str | None = None
        self._rows: list[Detection] = []

    def begin_source(self, path: str) -> None:
        self._source, self._rows = path, []

    def handle(self, detections: Sequence[Detection]) -> None:
        if self._source is None:  # used without begin_source: print as they come
            self._print(detections)
        else:
            self._rows += detections

    def _print(self, rows: Sequence[Detection]) -> None:
        for d in rows:
            self.out.write(
                f"  {d.offset_s:9.1f} {d.end_offset_s:9.1f}  {d.start_utc:<24} {d.score:5.2f} {d.mean_score:5.2f} "
                f"{d.n_windows:3d}  {d.common_name} ({d.label})\n"
            )
        self.out.flush()

    def end_source(self) -> None:
        if self._source is None:
            return
        self.out.write(f"\n{self._source}\n")
        if not self._rows:
            self.out.write("  no detections\n")
        else:
            self.out.write(f"  {'start':>9} {'end':>9}  {'start (UTC)':<24} {'score':>5} {'mean':>5} {'win':>3}  species\n")
            self._print(sorted(self._rows, key=lambda d: (d.offset_s, d.label)))
        self._source, self._rows = None, []


class CSVWriter(_StreamWriter):
    """One row per detection event, a column per field of the record."""

    def __init__(self, out: IO[str] | None = None):
        super().__init__(out)
        self._w = csv.writer(self.out, lineterminator="\n")
        self._w.writerow(DETECTION_FIELDS)

    def handle(self, detections: Sequence[Detection]) -> None:
        for d in detections:
            self._w.writerow([getattr(d, c) for c in DETECTION_FIELDS])


class JSONWriter(_StreamWriter):
    """One JSON array of detection objects, written when closed."""

    def __init__(self, out: IO[str] | None = None):
        super().__init__(out)
        self._rows: list[dict] = []

    def handle(self, detections: Sequence[Detection]) -> None:
        self._rows += [d.to_dict() for d in detections]

    def close(self) -> None:
        json.dump(self._rows, self.out, indent=1)
        self.out.write("\n")
        super().close()


class RavenWriter(Writer):
    """One Raven selection table per source file."""

    suffix = ".dawnchorus.selection.table.txt"

    def __init__(self, out_dir: str | Path | None = None, low_hz: float = 0.0, high_hz: float = 16000.0,
                 inputs: list | None = None):
        self.dir = Path(out_dir or ".")
        self.low_hz, self.high_hz = float(low_hz), float(high_hz)
        self.base = input_base(inputs)
        self.dir.mkdir(parents=True, exist_ok=True)  # OSError now, before any audio, if it cannot be made
        self.written: list[Path] = []
        self.errors: list[str] = []  # tables that could not be written (the detections are in the store)
        self._rows: list[Detection] = []
        self._source: str | None = None

    def path_for(self, source: str) -> Path:
        """The table for ``source``: its folder relative to the inputs' base, mirrored under the output."""
        src = Path(source)
        rel = Path(src.name)
        if self.base is not None:
            try:
                rel = src.relative_to(self.base)
            except ValueError:
                pass
        path = self.dir / rel.parent / (rel.stem + self.suffix)
        n = 1
        while path in self.written:
            n += 1
            path = self.dir / rel.parent / f"{rel.stem}.{n}{self.suffix}"
        if n > 1:
            log.warning("two recordings map to one Raven table name; %s gets %s", source, path.name)
        return path

    def begin_source(self, path: str) -> None:
        self._source, self._rows = path, []

    def handle(self, detections: Sequence[Detection]) -> None:
        self._rows += detections

    def end_source(self) -> None:
        if self._source is None:
            return
        path = self.path_for(self._source)
        rows = sorted(self._rows, key=lambda d: (d.offset_s, d.label))
        self._source, self._rows = None, []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh, delimiter="\t", lineterminator="\n")
                w.writerow(RAVEN_COLUMNS)
                for i, d in enumerate(rows, 1):
                    own = {"Selection": i, "View": "Spectrogram 1", "Channel": 1,
                           "Low Freq (Hz)": f"{self.low_hz:.1f}", "High Freq (Hz)": f"{self.high_hz:.1f}"}
                    w.writerow([own[c] if f is None else _RAVEN_FORMATS.get(f, "{}").format(getattr(d, f))
                                for c, f in RAVEN_FIELDS.items()])
        except OSError as exc:  # a full disk, a file where a folder should be: said, and the run goes on
            self.errors.append(f"cannot write {path}: {(exc.strerror or str(exc)).lower()}")
            log.error("%s", self.errors[-1])
            return
        self.written.append(path)


def input_base(inputs: list | None) -> Path | None:
    """The folder the inputs share (a file counts as its folder), resolved; None without inputs."""
    if not inputs:
        return None
    dirs = []
    for p in inputs:
        p = Path(p)
        try:
            r = p.resolve()
        except (OSError, RuntimeError):  # a symlink loop: named as given
            r = p.absolute()
        dirs.append(r if r.is_dir() else r.parent)
    try:
        common = Path(os.path.commonpath([str(d) for d in dirs]))
    except ValueError:
        return None
    from edge.sources.file import display_path

    return Path(display_path(common))  # as sources name files


def make_writer(fmt: str, out: str | None, *, low_hz: float = 0.0, high_hz: float = 16000.0,
                inputs: list | None = None) -> Writer:
    """A writer for ``fmt``; ``out`` is a file (a directory for raven), None for standard output.

    ``inputs`` (the paths given) let the Raven writer mirror their folders."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "raven":
        return RavenWriter(out, low_hz, high_hz, inputs)
    stream = open(out, "w", newline="") if out else sys.stdout
    streams: dict[str, Callable[[IO[str]], Writer]] = {"table": TableWriter, "csv": CSVWriter, "json": JSONWriter}
    return streams[fmt](stream)
