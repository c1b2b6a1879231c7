"""Streaming resampling for the sources: the contract's resampler (``edge.contract.resample``).

Files and microphones resample with the same libsoxr settings the trainer
uses for whole recordings, so the edge computes the features the model was
trained on.
"""
from edge.contract.resample import QUALITY, StreamResampler, resample

__all__ = ["QUALITY", "StreamResampler", "resample"]
