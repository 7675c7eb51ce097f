"""Talking to Redis: the RESP connection, the function library (`lua/`) and its loader,
per-database connection pools and keyspace scans. Used by capture, the pipelines and the
consistency path; knows nothing about Kafka or regions."""
