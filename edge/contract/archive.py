"""Bounded reading of a bundle's ZIP archive: nothing is inflated before it is measured.

Anyone who can publish on a model topic can send bytes that reach this code
before any signature is checked, so every cost is bounded from the
archive's own declarations first:

- the end-of-central-directory record is read by hand and an archive that
  declares more than ``MAX_MEMBERS`` entries (or ZIP64) is refused before
  ``zipfile`` builds an object per entry;
- member names must be unique (a second ``manifest.json`` could otherwise
  shadow the signed one, depending on the reader);
- every member's declared size and the total must fit ``max_bytes``, only
  stored and deflated members are read, and a member larger than
  ``RATIO_FREE_BYTES`` may not inflate more than ``MAX_RATIO`` times;
- reading a member stops at its declared size (zipfile's reader never
  yields more), so a header that lies about the size ends in a CRC error,
  not in memory.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

MAX_MEMBERS = 16
MAX_RATIO = 100
RATIO_FREE_BYTES = 1 << 20  # small members (JSON) may compress well
_EOCD = b"PK\x05\x06"


class ArchiveError(ValueError):
    """An archive refused before (or while) reading it; the message says why."""


def declared_entries(data: bytes) -> int:
    """Entry count from the end-of-central-directory record (ArchiveError if there is none)."""
    tail = data[-(22 + 65535):]
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise ArchiveError("not a ZIP archive (no end-of-central-directory record; truncated or another kind of file)")
    _disk, _cd_disk, _here, total, _size, _offset = struct.unpack("<HHHHII", tail[at + 4 : at + 20])
    if total == 0xFFFF:
        raise ArchiveError("ZIP64 archives are not bundles")
    return total


class BoundedZip:
    """A ZIP archive whose members were all measured against the limits at open."""

    def __init__(self, data: bytes, max_bytes: int):
        n = declared_entries(data)
        if n > MAX_MEMBERS:
            raise ArchiveError(f"{n} members declared (a bundle has at most {MAX_MEMBERS})")
        try:
            self._zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error) as exc:
            raise ArchiveError(f"damaged archive ({exc})") from None
        infos = self._zf.infolist()
        names = [i.filename for i in infos]
        dups = sorted({x for x in names if names.count(x) > 1})
        if dups:
            raise ArchiveError(f"duplicate member name(s) {dups}")
        if len(infos) > MAX_MEMBERS:
            raise ArchiveError(f"{len(infos)} members (a bundle has at most {MAX_MEMBERS})")
        total = 0
        for i in infos:
            if i.flag_bits & 0x1:
                raise ArchiveError(f"member {i.filename!r} is encrypted")
            if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ArchiveError(f"member {i.filename!r} uses compression method {i.compress_type} "
                                   "(only stored or deflated)")
            if i.file_size > max_bytes:
                raise ArchiveError(f"member {i.filename!r} declares {i.file_size} bytes, over the limit of {max_bytes}")
            if i.file_size > RATIO_FREE_BYTES and i.file_size > MAX_RATIO * max(1, i.compress_size):
                raise ArchiveError(f"member {i.filename!r} would inflate {i.compress_size} bytes to {i.file_size} "
                                   f"(more than {MAX_RATIO}x: a compression bomb?)")
            total += i.file_size
        if total > max_bytes:
            raise ArchiveError(f"members declare {total} bytes in all, over the limit of {max_bytes}")
        self.infos = {i.filename: i for i in infos}
        self.names = set(self.infos)

    def size(self, name: str) -> int:
        return self.infos[name].file_size

    def read(self, name: str, max_size: int | None = None) -> bytes:
        """One member's bytes; refused when its declared size exceeds ``max_size``."""
        info = self.infos[name]
        if max_size is not None and info.file_size > max_size:
            raise ArchiveError(f"member {name!r} declares {info.file_size} bytes, over its limit of {max_size}")
        try:
            with self._zf.open(info) as f:
                blob = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, struct.error, zlib.error) as exc:
            raise ArchiveError(f"damaged member {name!r} ({exc})") from None
        if len(blob) != info.file_size:
            raise ArchiveError(f"member {name!r} holds {len(blob)} bytes, its header says {info.file_size}")
        return blob

    def close(self) -> None:
        self._zf.close()
