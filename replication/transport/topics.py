"""Creating the topics a region needs (idempotent: existing topics are left alone)."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from replication.model.keys import changes_topic, clients_topic, control_topic, deadletter_topic
from replication.transport.settings import KafkaSettings

log = logging.getLogger(__name__)


def topic_plan(settings: KafkaSettings, regions: list[str]) -> dict[str, int]:
    """topic -> partitions for every region's change topic and the shared topics."""
    plan = {changes_topic(settings.topic_prefix, r): settings.partitions for r in regions}
    # One partition: the control topic's messages must stay in order (sessions), and it
    # carries little.
    plan[control_topic(settings.topic_prefix)] = 1
    plan[deadletter_topic(settings.topic_prefix)] = 1
    plan[clients_topic(settings.topic_prefix)] = 1
    return plan


async def ensure_topics(settings: KafkaSettings, regions: list[str]) -> list[str]:
    """Create whatever topics are missing; returns the names created."""
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        plan = topic_plan(settings, regions)
        missing = [
            NewTopic(
                name,
                num_partitions=parts,
                replication_factor=settings.replication_factor,
                topic_configs={"max.message.bytes": str(settings.max_message_bytes)},
            )
            for name, parts in plan.items()
            if name not in existing
        ]
        if missing:
            # Another region's daemon may create one at the same moment: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics: %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()
