"""When a recording started: from the recorder's own header, else from its file name.

Recorders write the start time into the file, with its time zone:

* **GUANO** (Wildlife Acoustics Song Meter, Titley, Pettersson and many
  others): a ``guan`` chunk in the WAV with ``Timestamp: 2024-05-01T05:30:00-04:00``
  (ISO 8601; without an offset it is the recorder's local time). The chunk is
  found here (whatever the WAV's sample format) and its text parsed with the
  ``guano`` package (the format's reference implementation).
* **AudioMoth**: the WAV's ``LIST/INFO/ICMT`` comment, ``Recorded at
  12:00:00 01/05/2024 (UTC+1) by AudioMoth 24F319055FDF2F5B ...``. Parsed
  with ``metamoth`` (every firmware's comment format it knows); comments it
  does not know (newer firmware) fall back to the documented time prefix,
  which has not changed since firmware 1.2.

``recording_start(path, zone)`` tries them in that order and then the file
name (``YYYYMMDD_HHMMSS`` or early AudioMoth's hex Unix time). A time
without an offset (a GUANO local time, a file name) is taken in ``zone`` (an
IANA name such as ``Europe/Berlin``; ``replay --timezone`` or
``sources.timezone``), else as UTC. Daylight-saving folds use the first of
the two times (zoneinfo's ``fold=0``) and say so in the log.

Headers are read for WAV files only (other formats carry neither chunk); a
header that cannot be read is logged and skipped, never fatal.
"""
from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

WAV_SUFFIXES = frozenset({".wav", ".wave"})

_NAME_TIME = re.compile(
    r"(?<!\d)(?P<y>(?:19|20)\d{2})-?(?P<mo>[01]\d)-?(?P<d>[0-3]\d)[_T -]"
    r"(?P<h>[0-2]\d)[-:]?(?P<mi>[0-5]\d)[-:]?(?P<s>[0-5]\d)(?!\d)"
)
_HEX_TIME = re.compile(r"^(?P<hex>[0-9A-Fa-f]{8})$")  # early AudioMoth firmware: Unix time in hex
#: the AudioMoth comment's time prefix, the same in every firmware since 1.2
_AM_TIME = re.compile(
    r"Recorded at (?P<t>\d{2}:\d{2}:\d{2} \d{2}/\d{2}/\d{4})(?: \(UTC(?P<off>[+-]\d{1,2}(?::\d{2})?)?\))?"
)


class TimeZoneError(ValueError):
    """An unknown time-zone name; the message names it and the fix."""


@dataclass(frozen=True)
class RecordingTime:
    """A recording's start, in UTC, and where it was read."""

    start_utc: datetime
    #: "guano", "audiomoth" or "file-name" (the detection record's ``time_source``)
    source: str
    #: the zone the recorder used: "UTC+01:00", "Europe/Berlin (configured)", "UTC (assumed)"
    zone: str


def load_zone(name: Optional[str]) -> Optional[tzinfo]:
    """An IANA time zone by name (``None``/"" -> None); ``TimeZoneError`` naming it when unknown."""
    if not name:
        return None
    if name.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeZoneError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or "
                            f"America/Puerto_Rico, or UTC") from None


def localize(naive: datetime, zone: Optional[tzinfo], what: str = "") -> tuple[datetime, str]:
    """A naive local time in ``zone`` (None: UTC) as UTC, and a description of the zone used."""
    if zone is None:
        return naive.replace(tzinfo=timezone.utc), "UTC (assumed)"
    first = naive.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(timezone.utc)
    if first.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
        missing = utc.astimezone(zone).replace(tzinfo=None) != naive
        log.warning("%s: %s local time in %s %s; taking %s", what or "recording time", naive.isoformat(),
                    getattr(zone, "key", zone), "does not exist (clocks went forward)" if missing else
                    "happens twice (clocks went back)", utc.isoformat())
    return utc, f"{getattr(zone, 'key', str(zone))} (configured)"


def _offset_name(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    sign = "-" if off < timedelta(0) else "+"
    minutes = abs(int(off.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# ---- file name ---------------------------------------------------------------
def time_from_name(path: str | Path) -> tuple[datetime, bool] | None:
    """The time in a file name and whether it is naive (local) or absolute (hex Unix time)."""
    stem = Path(path).stem
    m = _NAME_TIME.search(stem)
    if m:
        try:
            y, mo, d, h, mi, s = (int(m[k]) for k in ("y", "mo", "d", "h", "mi", "s"))
            return datetime(y, mo, d, h, mi, s), True
        except ValueError:
            return None
    m = _HEX_TIME.match(stem)
    if m:
        ts = int(m["hex"], 16)
        if 1420070400 <= ts <= 4102444800:  # 2015..2100
            return datetime.fromtimestamp(ts, tz=timezone.utc), False
    return None


# ---- RIFF chunks --------------------------------------------------------------
MAX_CHUNK = 1 << 16  # metadata chunks are small; a larger one is not read


def wav_metadata_chunks(path: Path) -> dict[str, bytes]:
    """The ``guan`` chunk and the ``LIST/INFO/ICMT`` comment of a RIFF/WAVE file (raw bytes), by name.

    Reads only chunk headers and the two small chunks (the audio is skipped),
    whatever the WAV's sample format.
    """
    found: dict[str, bytes] = {}
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return found
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, length = struct.unpack("<4sI", f.read(8))
            if cid == b"guan" and length <= MAX_CHUNK:
                found["guan"] = f.read(length)
            elif cid == b"LIST" and length <= MAX_CHUNK:
                body = f.read(length)
                i = 4 if body[:4] == b"INFO" else len(body)
                while i + 8 <= len(body):
                    sid, slen = struct.unpack("<4sI", body[i:i + 8])
                    if sid == b"ICMT":
                        found["ICMT"] = body[i + 8:i + 8 + slen].split(b"\0", 1)[0]
                    i += 8 + slen + (slen & 1)
            pos += 8 + length + (length & 1)
    return found


# ---- GUANO ----------------------------------------------------------------------
def guano_time(text: bytes, zone: Optional[tzinfo], what: str = "") -> Optional[RecordingTime]:
    """The ``Timestamp`` of GUANO metadata (the ``guan`` chunk's text), or None."""
    try:
        import guano
    except ImportError:  # pragma: no cover - guano is in the edge extra
        log.debug("guano is not installed; GUANO metadata is not read")
        return None
    try:
        stamp = guano.GuanoFile.from_string(text).get("Timestamp")
    except Exception as exc:  # noqa: BLE001 - a broken header is skipped, not fatal
        log.warning("%s: GUANO metadata unreadable, ignored (%s)", what, exc)
        return None
    if not isinstance(stamp, datetime):
        if stamp:
            log.warning("%s: GUANO Timestamp %r is not an ISO 8601 time, ignored", what, stamp)
        return None
    if stamp.tzinfo is None:  # the recorder's local time
        utc, zone_name = localize(stamp, zone, f"{what} GUANO Timestamp")
        return RecordingTime(utc, "guano", zone_name)
    return RecordingTime(stamp.astimezone(timezone.utc), "guano", _offset_name(stamp))


# ---- AudioMoth -------------------------------------------------------------------
def parse_audiomoth_comment(comment: str) -> Optional[datetime]:
    """The aware start time in an AudioMoth comment, or None if it is not one."""
    if "AudioMoth" not in comment:
        return None
    try:
        from metamoth.parsing import MessageFormatError, parse_comment

        try:
            meta = parse_comment(comment)
            when, tz = meta.get("datetime"), meta.get("timezone")
            if isinstance(when, datetime):
                return when.replace(tzinfo=tz or timezone.utc)
        except MessageFormatError:
            pass  # newer firmware than metamoth knows: the documented prefix below
    except ImportError:  # pragma: no cover - metamoth is in the edge extra
        pass
    m = _AM_TIME.search(comment)
    if not m:
        return None
    try:
        naive = datetime.strptime(m["t"], "%H:%M:%S %d/%m/%Y")
    except ValueError:
        return None
    off = timedelta(0)
    if m["off"]:
        h, _, mins = m["off"].partition(":")
        sign = -1 if h.startswith("-") else 1
        off = sign * timedelta(hours=abs(int(h)), minutes=int(mins or 0))
    return naive.replace(tzinfo=timezone(off))


def audiomoth_time(comment: bytes) -> Optional[RecordingTime]:
    when = parse_audiomoth_comment(comment.decode("utf-8", "replace").strip())
    if when is None:
        return None
    return RecordingTime(when.astimezone(timezone.utc), "audiomoth", _offset_name(when))


def header_time(path: Path, zone: Optional[tzinfo]) -> Optional[RecordingTime]:
    """The start time in a WAV file's GUANO or AudioMoth header, or None."""
    try:
        chunks = wav_metadata_chunks(path)
    except (OSError, struct.error) as exc:
        log.warning("%s: WAV header unreadable, ignored (%s)", path, exc)
        return None
    try:
        found = guano_time(chunks["guan"], zone, path.name) if "guan" in chunks else None
        if found is None and "ICMT" in chunks:
            found = audiomoth_time(chunks["ICMT"])
    except (ValueError, OverflowError) as exc:  # an offset past 24 h, a time at the calendar's ends
        log.warning("%s: recorder header time unusable, ignored (%s)", path.name, str(exc)[:120])
        return None
    return found


# ---- all together -------------------------------------------------------------------
def recording_start(path: str | Path, zone: str | tzinfo | None = None) -> Optional[RecordingTime]:
    """The start of a recording from its GUANO or AudioMoth header, else its file name; None if none says.

    ``zone``: where naive (local) times are (an IANA name or a tzinfo); None: UTC.
    """
    p = Path(path)
    tz = load_zone(zone) if isinstance(zone, str) else zone
    if p.suffix.lower() in WAV_SUFFIXES and p.is_file():
        found = header_time(p, tz)
        if found is not None:
            return found
    named = time_from_name(p)
    if named is None:
        return None
    when, naive = named
    if not naive:
        return RecordingTime(when, "file-name", "UTC")
    utc, zone_name = localize(when, tz, p.name)
    return RecordingTime(utc, "file-name", zone_name)
