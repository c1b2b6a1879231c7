"""Audio sources: where the pipeline's samples come from: files (``file``, recorder time metadata in
``metadata``) and the microphone (``mic``, with its ``ringbuffer``); both resample with the contract's
resampler (``edge.contract.resample``).

Every source implements ``edge.types.AudioSource``: ``blocks(stop)`` yields
mono float32 ``AudioBlock``s at the pipeline's rate.

Imports from edge: contract, types, clock, config.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

from edge.sources.file import (AUDIO_EXTENSIONS, FileSource, SourceError, display_path, find_audio_files,
                               start_time_from_name)
from edge.types import AudioBlock

__all__ = ["AUDIO_EXTENSIONS", "FileSource", "SourceError", "display_path", "find_audio_files", "start_time_from_name",
           "timed"]


def timed(blocks: Iterator[AudioBlock], spent: Callable[[float], None]) -> Iterator[AudioBlock]:
    """The blocks, the time each took to come (decoding, resampling) handed to ``spent``."""
    while True:
        t0 = time.perf_counter()
        try:
            block = next(blocks)
        except StopIteration:
            return
        finally:
            spent(time.perf_counter() - t0)
        yield block

