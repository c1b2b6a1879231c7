"""Streaming resampling for the sources: the contract's resampler (``edge.contract.resample``).

Files resample exactly as the trainer does (``FileResampler``, in fixed
blocks, so a file split over processes gives the same samples);
microphones resample one continuous stream (``StreamResampler``).
"""
from edge.contract.resample import QUALITY, FileResampler, StreamResampler, resample

__all__ = ["QUALITY", "FileResampler", "StreamResampler", "resample"]
