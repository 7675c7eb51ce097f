"""Real local servers (redis-server, a single-node Kafka in KRaft mode) on loopback.

Used by the test suite's fixtures, the demo and the benchmarks; never by the daemon itself.
Everything binds to 127.0.0.1 on ports the OS hands out.
"""

from devcluster.kafka_broker import KafkaBroker, ensure_kafka_classpath
from devcluster.ports import free_port
from devcluster.redis_server import RedisServer

__all__ = ["KafkaBroker", "RedisServer", "ensure_kafka_classpath", "free_port"]
