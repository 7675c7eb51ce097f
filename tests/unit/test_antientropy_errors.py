"""A session failure inside the concurrent repair chunks is reported, not raised as a group."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.consistency.antientropy import SessionError
from replication.errors import first_cause


async def test_a_chunk_failure_surfaces_as_its_cause() -> None:
    async def fails() -> None:
        raise SessionError("peer us-east missed heartbeats")

    async def waits() -> None:
        await asyncio.sleep(10)

    async def chunks() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(waits())
            group.create_task(fails())

    with pytest.raises(ExceptionGroup) as caught:
        await chunks()
    leaf = first_cause(caught.value)
    assert isinstance(leaf, SessionError)
    assert str(leaf) == "peer us-east missed heartbeats"


def test_nested_groups_are_searched_depth_first_and_cancellations_skipped() -> None:
    inner = ExceptionGroup("inner", [OSError("connection refused")])
    group = BaseExceptionGroup("outer", [asyncio.CancelledError(), inner])
    assert isinstance(first_cause(group), OSError)
