"""Audio sources: where the pipeline's samples come from: files (``file``, recorder time metadata in
``metadata``) and the microphone (``mic``, with its ``ringbuffer``); ``resample`` streams the contract's
resampler.

Every source implements ``edge.types.AudioSource``: ``blocks(stop)`` yields
mono float32 ``AudioBlock``s at the pipeline's rate.

Imports from edge: contract, types, clock, config.
"""
from edge.sources.file import (AUDIO_EXTENSIONS, FileSource, SourceError, display_path, find_audio_files,
                               start_time_from_name)

__all__ = ["AUDIO_EXTENSIONS", "FileSource", "SourceError", "display_path", "find_audio_files", "start_time_from_name"]
