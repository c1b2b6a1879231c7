"""The local dashboard (``python -m edge web``, or a service of the daemon with ``web.enabled``): Starlette
pages over the store (detections, species, reviews, health), spectrograms and clips, login and CSRF.

Imports from edge: contract, types, clock, config, sources, outputs.
"""
