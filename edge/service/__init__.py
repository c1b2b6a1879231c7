"""The service side: ``runtime`` (the one assembly of source -> pipeline -> store -> sinks and services,
for ``run`` and ``replay``), ``sessions`` (effort rows), ``daemon`` (the runtime with the microphone,
systemd and signals), ``replay`` (per-file replay, picklable for worker processes), ``parallel`` and
``cluster`` (replay on every core or a Dask cluster), ``updates`` and ``modelstore`` (signed model
updates), ``health``, ``alerts``, ``sdnotify``.

Imports from edge: contract, types, clock, heap, files, procstat, config, sources, detection, outputs, service.
"""
