"""The C heap of ``python -m edge``: where freed memory goes (glibc; elsewhere no-ops).

``configure()`` (edge/__main__.py, before anything is allocated) sets two
glibc thresholds, measured on a 30-minute replay (minor page faults) and with
bench/_hostile.py (peak RSS under hostile MQTT messages):

- ``M_MMAP_THRESHOLD`` 4 MB: blocks smaller than that come from the heap and
  are reused when freed. glibc's default (128 KB, then sliding) hands the
  front-end's temporaries (all under 4 MB) to mmap and back on every block:
  2.0 million page faults for 30 minutes of audio, against 13,400 here (1 MB:
  119,000). Blocks of 4 MB and more (an MQTT message of a model bundle, the
  buffers paho reads it into) are mapped and unmapped on their own, so they
  never stay resident in a heap after the message is gone.
- ``M_TRIM_THRESHOLD`` 16 MB: a heap returns its free top beyond that. The
  front-end's working set never frees that much at once (8 MB: the same
  13,400 faults), while freed message buffers do. Each thread's malloc arena
  is trimmed only this way: ``malloc_trim`` leaves the top of a thread's
  arena alone, so with the former 64 MB threshold (which a thread's arena,
  64 MB at most, never reaches) paho's network thread kept some 45 MB of
  freed message buffers resident for good.

``release_heap()`` gives back free pages inside the heaps (``malloc_trim``)
after a rare large message.

Imports from edge: none.
"""
from __future__ import annotations

import os

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def configure() -> None:
    """Set the thresholds above, unless the environment sets glibc's own (``MALLOC_MMAP_THRESHOLD_``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def release_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
