"""StallWatch: which part of the change stream was written while the process did not run."""

from __future__ import annotations

from replication.pipeline.stall import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Redis:
    """The master offset Redis answers (None: it does not answer)."""

    def __init__(self) -> None:
        self.offset: int | None = 1_000
        self.asked = 0

    async def master_offset(self) -> int | None:
        self.asked += 1
        return self.offset


def watch() -> tuple[StallWatch, Clock, Redis]:
    clock, redis = Clock(), Redis()
    return StallWatch(redis.master_offset, threshold_s=2.0, clock=clock), clock, redis


async def test_without_a_stall_nothing_is_late_and_redis_is_not_asked() -> None:
    stall, clock, redis = watch()
    for offset in (10, 20, 30):
        clock.now += 0.5
        assert not await stall.is_late(offset)
    assert not await stall.behind()
    assert redis.asked == 0
    assert stall.stalls == 0


async def test_what_piled_up_during_a_stall_is_late_until_the_stream_passes_it() -> None:
    stall, clock, redis = watch()
    clock.now += 5.0  # SIGSTOP for 5 s: Redis took writes through offset 1,000
    assert await stall.is_late(400)
    redis.offset = 1_500  # live writes after the resume
    assert await stall.behind()
    assert await stall.is_late(1_000)
    assert not await stall.is_late(1_200)  # past the pile: live again, for good
    assert not await stall.behind()
    assert not await stall.is_late(900)
    assert redis.asked == 1
    assert stall.stalls == 1


async def test_a_redis_that_does_not_answer_is_asked_again_at_the_next_batch() -> None:
    stall, clock, redis = watch()
    clock.now += 3.0
    redis.offset = None
    assert not await stall.is_late(10)
    redis.offset = 50
    assert await stall.is_late(20)
    assert redis.asked == 2


async def test_a_gap_forgets_the_pile_offsets_start_again() -> None:
    stall, clock, _ = watch()
    clock.now += 3.0
    assert await stall.is_late(10)
    stall.forget()  # the Redis restarted: its new stream starts near 0
    assert not await stall.is_late(5)
    assert not await stall.behind()
