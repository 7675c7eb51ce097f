"""The write path: clocks, change events and their wire format, digests, conflict resolution,
change capture from Redis, the Kafka transport and the applier.

This package never imports `reconciler` (the consistency path and the process).
"""
