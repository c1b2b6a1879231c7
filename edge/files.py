"""Whole-file writes: a crash or a full disk leaves the old file or the new one, never half of one.

``atomic_file(path)`` yields a file object on a temporary file beside ``path``
(same directory, so the rename is atomic); on success it is renamed over
``path``, on any error it is removed, so no ``.part`` leftovers pile up.
``durable=True`` also fsyncs the file before the rename and the directory
after it (bundles, the model state: worth an fsync on an SD card; clips,
the health file and caches are not). ``atomic_write`` is the one-call form.

Imports from edge: none.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading
from pathlib import Path
from typing import IO, Iterator

PART = ".part"


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SERIAL = itertools.count()


def part_path(path: Path) -> Path:
    """The temporary name beside ``path``: hidden, ending in ``.part``, unique to this call (process,
    thread and a counter), so two writers of one path (parallel training runs sharing a cache) each
    rename a whole file of their own."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_SERIAL)}{PART}")


@contextlib.contextmanager
def atomic_file(path: str | Path, *, durable: bool = False, mode: int = 0o644,
                tmp: str | Path | None = None) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary file (``tmp``, default ``part_path(path)``), renamed when done."""
    path = Path(path)
    tmp_path = Path(tmp) if tmp is not None else part_path(path)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, *, durable: bool = False, mode: int = 0o644,
                 tmp: str | Path | None = None) -> None:
    with atomic_file(path, durable=durable, mode=mode, tmp=tmp) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
