"""A minimal PNG writer (8-bit greyscale or RGB) with zlib: no PIL, no matplotlib.

``encode_png(rows, width, height, channels)`` takes the raw pixel bytes, row
after row (``width * channels`` bytes each), and returns the PNG file bytes.
Each row gets filter type 0 (None); zlib does the rest.
"""
from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (greyscale, truecolour)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: bytes, width: int, height: int, channels: int = 3, level: int = 6) -> bytes:
    if channels not in _COLOR_TYPES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), not {channels}")
    if width <= 0 or height <= 0:
        raise ValueError(f"an image needs a positive size, not {width}x{height}")
    stride = width * channels
    if len(pixels) != stride * height:
        raise ValueError(f"expected {stride * height} bytes for {width}x{height}x{channels}, got {len(pixels)}")
    raw = b"".join(b"\x00" + pixels[i:i + stride] for i in range(0, len(pixels), stride))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


def decode_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG; raises ValueError if it is not one."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])
