"""Hypothesis strategies for events, shared by the unit tests."""

from __future__ import annotations

from hypothesis import strategies as st

from replication.model.digest import value_digest
from replication.model.event import ChangeEvent
from replication.model.value import Kind
from replication.model.vclock import VectorClock

REGIONS = ["ap-south", "eu-west", "us-east"]
blobs = st.binary(min_size=0, max_size=16)
keys = st.binary(min_size=1, max_size=24).filter(lambda k: not k.startswith(b"__rr:"))
scores = st.floats(allow_nan=False, width=64)

values = st.one_of(
    st.tuples(st.just(Kind.NONE), st.none()),
    st.tuples(st.just(Kind.STRING), blobs),
    st.tuples(st.just(Kind.LIST), st.lists(blobs, min_size=1, max_size=6)),
    st.tuples(st.just(Kind.SET), st.sets(blobs, min_size=1, max_size=6)),
    st.tuples(st.just(Kind.HASH), st.dictionaries(blobs, blobs, min_size=1, max_size=6)),
    st.tuples(st.just(Kind.ZSET), st.dictionaries(blobs, scores, min_size=1, max_size=6)),
)


@st.composite
def events(draw: st.DrawFn) -> ChangeEvent:
    kind, value = draw(values)
    origin = draw(st.sampled_from(REGIONS))
    entries = draw(st.dictionaries(st.sampled_from(REGIONS), st.integers(1, 2**52)))
    entries[origin] = draw(st.integers(1, 2**52))
    expire = 0 if kind is Kind.NONE else draw(st.sampled_from([0, 1_800_000_000_000]))
    return ChangeEvent(
        db=draw(st.integers(0, 15)),
        key=draw(keys),
        kind=kind,
        value=value,
        expire_at_ms=expire,
        clock=VectorClock(entries),
        origin=origin,
        digest=value_digest(kind, value, expire),
    )
