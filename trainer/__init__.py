"""The trainer: datasets, augmentation, MobileNetV2 log-mel model, training, int8 quantization, evaluation and
reports, signed bundles, distillation from BirdNET, and ``push`` to the fleet over MQTT.

Imports from edge: the contract (``edge.contract``), the MQTT settings ``push`` reads (``edge.config.mqtt``), the
hardened YAML loader (``edge.config.safe_yaml``) and the
topic names (``edge.outputs.mqtt.topics``); never the daemon.
"""
