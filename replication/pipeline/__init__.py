"""The replication pipelines: local changes out (`outbound`: capture -> versioner -> Kafka)
and peers' changes in (`inbound`: Kafka -> `applier` -> Redis)."""
