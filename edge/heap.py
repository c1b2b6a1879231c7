"""Giving freed heap back to the system after a rare large allocation.

``python -m edge`` asks glibc to keep up to 64 MB of freed heap (edge/__main__.py:
the front-end's few-MB temporaries would otherwise cost page faults on every
block). A large MQTT message (a model bundle, or one dropped for its size)
leaves its copies in that kept heap, so the RSS stays up by a few times its
size; ``release_heap()`` returns it. Cheap, and called only after such a
message. A no-op without glibc.

Imports from edge: none.
"""
from __future__ import annotations


def release_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
