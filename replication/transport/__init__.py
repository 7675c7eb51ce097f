"""Kafka transport: topics, the change producer, the change consumer, dead letters."""
