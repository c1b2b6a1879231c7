"""Audio sources: where the pipeline's samples come from (files now, a microphone later).

Every source implements ``edge.types.AudioSource``: ``blocks(stop)`` yields
mono float32 ``AudioBlock``s at the pipeline's rate.
"""
from edge.sources.file import (AUDIO_EXTENSIONS, FileSource, SourceError, display_path, find_audio_files,
                               start_time_from_name)

__all__ = ["AUDIO_EXTENSIONS", "FileSource", "SourceError", "display_path", "find_audio_files", "start_time_from_name"]
