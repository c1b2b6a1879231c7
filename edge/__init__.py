"""dawnchorus on the recorder: audio -> log-mel -> int8 model -> detections -> store -> MQTT.

The folders follow the data's path: ``contract`` (what trainer and edge
share: front-end, bundle, signing, interpreter, the detection record),
``sources`` (file, microphone), ``detection`` (pipeline, post-processing),
``outputs`` (SQLite store, MQTT, writers, clips, dashboard), ``service``
(the one runtime for ``run`` and ``replay``, model updates, health) and
``cli`` (``python -m edge``). ``config`` is the YAML configuration, ``types``
the interfaces between the stages, ``clock`` time that clock steps cannot
move, ``heap`` giving freed memory back. ``tests/test_architecture.py`` enforces each
folder's imports.

Imports from edge: cli, heap.
"""
