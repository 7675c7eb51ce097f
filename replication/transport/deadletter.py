"""Dead letters: what cannot be verified, decoded, admitted or applied goes to
`<prefix>.deadletter` with the reason; the consumer moves on and counts it, by reason.

A dead letter's payload is what came in: the whole record (`unit=record`: it failed as a
whole, e.g. its signature) or one event's msgpack (`unit=event`: the rest of its record
was applied). Headers say why (`reason_code`, a fixed code, and `reason`, the message) and
where from; the forwarding daemon signs headers and payload with its own key
(`signer`, `key_id`, `mac` headers; `verify_dead_letter` checks them), so whoever reads the
topic knows which daemon parked what.

Forwarding never stops the consumer: a payload too large for Kafka is truncated (header
`truncated`), and one Kafka keeps refusing is given up after a few attempts (counted in
`failed`, logged). Logs are rate-limited per reason: a flood of forged records does not
become a flood of log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from replication.backoff import Backoff
from replication.model.auth import DOMAIN_DEADLETTER, AuthError, Keyring, Signature, Signer
from replication.model.keys import deadletter_topic

log = logging.getLogger(__name__)

# Every reason a record or an event is dead-lettered for (the `reason_code` header and the
# `reason` label of reconciler_deadletters_total, which starts at 0 for each: an alert on
# `increase()` sees the first one too). Where they are decided: replication.model.wire and
# .auth (records), .admission (events), replication.pipeline.applier and .inbound (Redis).
REASON_CODES = (
    # a record as a whole
    "unsigned",
    "unknown-key",
    "bad-signature",
    "wrong-source",
    "wrong-target",
    "undecodable",
    "oversized",
    "unknown-schema",
    # one event
    "malformed",
    "clock-range",
    "origin-mismatch",
    "unknown-origin",
    "unknown-clock-region",
    "clock-ahead",
    "db-not-replicated",
    "bad-digest",
    "unsupported-local",
    "redis-refused",
    "local-clock-range",
)

SIGNED_HEADERS = (
    "reason_code",
    "reason",
    "unit",
    "source_topic",
    "source_partition",
    "source_offset",
    "consumer_region",
    "truncated",
)
SEND_ATTEMPTS = 5
LOG_EVERY_S = 10.0
MAX_REASON_CHARS = 1000
HEADROOM_BYTES = 64 * 1024  # headers and record overhead below the message size limit


def _signed_parts(headers: dict[str, bytes], payload: bytes) -> list[bytes]:
    return [*(headers.get(name, b"") for name in SIGNED_HEADERS), payload]


def verify_dead_letter(
    keyring: Keyring, headers: Sequence[tuple[str, bytes]], payload: bytes
) -> str:
    """The region that forwarded this dead letter; AuthError if its signature fails."""
    by_name = dict(headers)
    signer = by_name.get("signer", b"").decode(errors="replace")
    signature = Signature(
        by_name.get("key_id", b"").decode(errors="replace"), by_name.get("mac", b"")
    )
    if not signer:
        raise AuthError("unsigned", "a dead letter without a signer header")
    keyring.verify(signer, DOMAIN_DEADLETTER, signature, *_signed_parts(by_name, payload))
    return signer


class DeadLetters:
    def __init__(
        self,
        producer: Callable[[], AIOKafkaProducer],
        prefix: str,
        signer: Signer,
        *,
        max_message_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._producer = producer
        self.topic = deadletter_topic(prefix)
        self.signer = signer
        self.region = signer.region
        self.max_payload = max(1024, max_message_bytes - HEADROOM_BYTES)
        self.count = 0
        self.by_reason: dict[str, int] = dict.fromkeys(REASON_CODES, 0)
        self.failed = 0
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last log, suppressed)

    async def send(
        self,
        payload: bytes,
        reason: str,
        *,
        code: str,
        topic: str,
        partition: int,
        offset: int,
        unit: str = "record",
    ) -> None:
        """Park `payload` with why and where it came from; returns once Kafka has it (or
        has refused it `SEND_ATTEMPTS` times)."""
        self.count += 1
        self.by_reason[code] = self.by_reason.get(code, 0) + 1
        self._log(code, f"unit={unit} topic={topic} partition={partition} offset={offset}", reason)
        truncated = len(payload) > self.max_payload
        if truncated:
            payload = payload[: self.max_payload]
        values = {
            "reason_code": code.encode(),
            "reason": reason[:MAX_REASON_CHARS].encode(errors="replace"),
            "unit": unit.encode(),
            "source_topic": topic.encode(),
            "source_partition": str(partition).encode(),
            "source_offset": str(offset).encode(),
            "consumer_region": self.region.encode(),
            "truncated": b"1" if truncated else b"",
        }
        signature = self.signer.sign(DOMAIN_DEADLETTER, *_signed_parts(values, payload))
        headers = [
            *((k, v) for k, v in values.items() if v),
            ("signer", self.region.encode()),
            ("key_id", signature.key_id.encode()),
            ("mac", signature.mac),
        ]
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                fut = await self._producer().send(self.topic, payload, headers=headers)
                await fut
                return
            except KafkaError as exc:
                if attempt == SEND_ATTEMPTS:
                    self.failed += 1
                    log.error(  # noqa: TRY400 - the Kafka error is the whole story
                        "dead letter not stored after %d attempts (reason=%s offset=%d): %s",
                        attempt,
                        code,
                        offset,
                        exc,
                    )
                    return
                await backoff.sleep()

    def _log(self, code: str, where: str, reason: str) -> None:
        now = time.monotonic()
        last, suppressed = self._logged.get(code, (0.0, 0))
        if last and now - last < LOG_EVERY_S:
            self._logged[code] = (last, suppressed + 1)
            return
        self._logged[code] = (now, 0)
        log.warning(
            "dead letter: reason=%s %s detail=%s%s",
            code,
            where,
            reason[:MAX_REASON_CHARS],
            f" (+{suppressed} more with this reason not logged)" if suppressed else "",
        )
