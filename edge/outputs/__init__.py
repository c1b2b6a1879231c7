"""Where detections go: the SQLite store (also the MQTT outbox), its journal, retention and reviews,
output writers (table, CSV, JSON, Raven), clips, the health file, MQTT (``mqtt/``) and the dashboard (``web/``).

Imports from edge: contract, types, clock, heap, files, procstat, config, sources, outputs.
"""
