"""Detection: blocks of samples -> windows -> model scores -> detection events (pure logic, no I/O).

``pipeline`` (framing, front-end, model calls, model swaps between windows),
``postprocess`` (thresholds, species lists, merging windows into events),
``guard`` (windows without signal are not scored).

Imports from edge: contract, types, config.
"""
