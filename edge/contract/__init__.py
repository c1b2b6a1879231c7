"""The trainer-edge contract: what every trained model and every recorder agree on.

``frontend`` (log-mel parameters and computation), ``resample`` (libsoxr, as
the trainer resamples), ``bundle``/``manifest``/``archive`` (the signed model
bundle), ``signing``, ``interpreter`` (LiteRT first, then tflite_runtime,
then tensorflow.lite as a last resort), ``record`` (the detection record,
UTC times, model output kinds). ``trainer`` imports these.

Imports from edge: none (the standard library, numpy, cryptography, soxr and the interpreters only).
"""
