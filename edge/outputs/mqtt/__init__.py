"""MQTT: the client (paho-mqtt 2, reconnects, TLS), topic names, JSON payloads, the publisher that
drains the store's outbox in order, Home Assistant discovery.

Imports from edge: contract, types, clock, heap, config, sources, outputs.
"""
