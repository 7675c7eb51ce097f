"""Which region gets the next command: the failover/failback state machine, without I/O.

Every region is ``healthy`` (it may receive traffic) or ``failed`` (it is probed in the
background and receives none). The active region is the first healthy one in the
configured order, so failover and failback are the same rule applied after a change:

* **Failover**: when a healthy region's error rate over the window reaches the threshold,
  with at least ``min_requests`` requests in the window, it becomes ``failed``. If it was
  the active region, traffic moves to the next healthy one.
* **Failback**: a failed region becomes healthy again only after it has answered every
  probe for ``failback_healthy_s`` (any failed probe restarts that clock) **and**, with
  ``require_consistent_status``, the record its probe read vouches for the instance it
  probed (:func:`reconciler.client.evidence.judge`: this region, this instance's
  ``run_id``, an expiry, ``consistent``) and was written after the failure was noticed
  (``updated_ms`` moved on), so that a record left over from before a crash, or from
  another instance, never vouches for a region that lost data. The home region coming
  back healthy takes the traffic back.
* **The instance behind a region**: the router remembers the ``run_id`` of the Redis
  instance whose data it trusts for each region (the first one seen, then the one the
  failback gate verified). A new connection to another instance (:meth:`Router.connected`)
  fails the region before any command runs on it: a Redis restarted empty in under a
  second never trips the error rate. Healthy regions are checked every
  ``probe_interval_s`` too: another instance, a left-over record, or a daemon saying its
  instance is not vouched for moves traffic away (a missing record does not: a daemon
  can be down while its Redis serves correct data).
* **Hysteresis**: a region that fails again soon after recovering (within
  ``failback_healthy_s + window_s``) must stay healthy twice as long the next time, up to
  eight times, so an intermittent fault that lets some probes through cannot make traffic
  flap. Its window is cleared on every state change so old failures never count twice.
* **Nothing healthy**: if every region has failed, commands go to the most preferred
  region whose probes currently succeed, else stay where they are: the application then
  sees the same errors plain redis-py would give it, never an invented one.

The router is shared by all threads of a client; one lock guards its state. Reading
:attr:`Router.active` takes no lock (an attribute read is atomic), so the hot path pays for
the lock only when it records the outcome.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from reconciler.client.config import PolicyConfig
from reconciler.client.evidence import Finding, Reading, Verdict, judge
from reconciler.client.health import APP_ERROR, FAILURE, OK, OutcomeWindow, WindowStats
from reconciler.events import log_event
from reconciler.status import RegionStatus
from replication.backoff import Backoff

__all__ = ["Event", "RegionSnapshot", "RegionState", "Router", "RouterSnapshot"]

log = logging.getLogger("reconciler.client")

_MAX_FLAPS = 3
_RECENT_EVENTS = 100
_NO_BASELINE = -2  # no status seen yet since the region failed

_Probe = tuple[bool, Reading | None, str]  # answered, what it read, why not


class RegionState(enum.Enum):
    """Whether a region may receive traffic."""

    HEALTHY = "healthy"
    FAILED = "failed"


@dataclass(frozen=True)
class Event:
    """A change worth an operator's attention.

    ``kind`` is ``failover`` or ``failback`` (the active region moved from ``from_region``
    to ``to_region``), ``region_down`` or ``region_up`` (``region`` changed state; the active
    region did not move because of it).
    """

    kind: str
    region: str
    from_region: str
    to_region: str
    reason: str
    at_ms: int


@dataclass(frozen=True)
class RegionSnapshot:
    """One region as the router sees it at one instant."""

    name: str
    state: RegionState
    stats: WindowStats
    probing_ok_s: float | None
    """How long its probes have been succeeding (None: not probing, or the last failed)."""
    hold_s: float
    """How long its probes must succeed before traffic returns (grows when it flaps)."""
    status: RegionStatus | None
    status_confirmed: bool
    probes_ok: int
    probes_failed: int
    run_id: str | None = None
    """The Redis instance whose data the client trusts for this region (None: not seen)."""
    finding: Finding | None = None
    """What the last probe or check found in its status record (None: none yet)."""


@dataclass(frozen=True)
class RouterSnapshot:
    """All regions, the active one and the transition counters at one instant."""

    active: str
    home: str
    regions: tuple[RegionSnapshot, ...]
    failovers: int
    failbacks: int
    events: tuple[Event, ...]
    """The most recent events, oldest first (bounded)."""
    event_counts: tuple[tuple[str, str, int], ...]
    """(kind, region, count) of every event since the client started."""


class _Region:
    """Mutable health of one region; every field is guarded by the router's lock."""

    __slots__ = (
        "backoff",
        "failed_at",
        "finding",
        "flaps",
        "index",
        "name",
        "next_probe_at",
        "ok_since",
        "probes_failed",
        "probes_ok",
        "recovered_at",
        "run_id",
        "state",
        "status",
        "status_baseline",
        "status_confirmed",
        "window",
    )

    def __init__(self, index: int, name: str, policy: PolicyConfig, rng: random.Random) -> None:
        self.index = index
        self.name = name
        self.window = OutcomeWindow(policy.window_s)
        self.state = RegionState.HEALTHY
        self.failed_at: float | None = None
        self.recovered_at: float | None = None
        self.flaps = 0
        self.ok_since: float | None = None
        self.next_probe_at = 0.0
        self.backoff = Backoff(
            base_s=policy.probe_interval_s, cap_s=policy.probe_backoff_cap_s, _rng=rng
        )
        self.status: RegionStatus | None = None
        self.status_baseline = _NO_BASELINE
        self.status_confirmed = False
        self.probes_ok = 0
        self.probes_failed = 0
        self.run_id: str | None = None
        self.finding: Finding | None = None


class Router:
    """The failover state machine shared by every thread (or task) of one client.

    `clock` is monotonic seconds and `wall_ms` wall-clock milliseconds (for event stamps);
    tests pass fakes. Listeners get every :class:`Event`, outside the lock, in the thread
    that caused it: they must be quick and must not call back into the router.
    """

    def __init__(
        self,
        names: Sequence[str],
        policy: PolicyConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rng: random.Random | None = None,
    ) -> None:
        if not names:
            raise ValueError("a router needs at least one region")
        self.policy = policy
        self._clock = clock
        self._wall_ms = wall_ms
        rng = rng or random.Random()
        self._regions = tuple(_Region(i, name, policy, rng) for i, name in enumerate(names))
        self.names = tuple(names)
        self.active = 0
        """Index of the region that receives new commands (read without the lock)."""
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []
        self._wakeups: list[Callable[[], None]] = []
        self._events: collections.deque[Event] = collections.deque(maxlen=_RECENT_EVENTS)
        self._event_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.failovers = 0
        self.failbacks = 0

    # -- wiring -----------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` with every event from now on."""
        self._listeners.append(listener)

    def add_probe_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Call `wakeup` whenever a region starts needing probes (wakes the prober)."""
        self._wakeups.append(wakeup)

    # -- the hot path -----------------------------------------------------------------

    def record_ok(self, index: int, latency_s: float | None) -> None:
        """A command on region `index` succeeded in `latency_s` (None: a blocking command,
        whose wait says nothing about the region)."""
        with self._lock:
            self._regions[index].window.record(self._clock(), OK, latency_s)

    def record_app_error(self, index: int, latency_s: float) -> None:
        """A command on region `index` ended with the application's own error."""
        with self._lock:
            self._regions[index].window.record(self._clock(), APP_ERROR, latency_s)

    def record_failure(self, index: int, latency_s: float, detail: str) -> None:
        """A command on region `index` failed because of the region; may fail it over."""
        events: list[Event] = []
        with self._lock:
            now = self._clock()
            region = self._regions[index]
            region.window.record(now, FAILURE, latency_s)
            if region.state is RegionState.HEALTHY:
                requests, failures = region.window.counts(now)
                policy = self.policy
                if (
                    requests >= policy.min_requests
                    and failures >= policy.error_rate_threshold * requests
                ):
                    reason = (
                        f"error rate {failures / requests:.2f} >= "
                        f"{policy.error_rate_threshold:.2f} ({failures}/{requests} requests "
                        f"in {policy.window_s:g}s); last: {detail}"
                    )
                    self._mark_failed(region, now, reason, events)
        self._dispatch(events)

    def next_region(self, tried: Collection[int]) -> int | None:
        """The region to retry a command on: first healthy one not yet tried, or None."""
        for region in self._regions:
            if region.index not in tried and region.state is RegionState.HEALTHY:
                return region.index
        return None

    def connected(self, index: int, run_id: str | None) -> str | None:
        """A new connection to region `index` reached the instance `run_id` (None: unknown,
        its ``INFO`` was refused). Returns None when commands may run on it, else the reason
        they may not: it is another instance than the one whose data the client trusts, and
        the region has been failed (its commands go elsewhere, as not sent)."""
        if run_id is None:
            return None
        events: list[Event] = []
        with self._lock:
            region = self._regions[index]
            known = region.run_id
            if known is None:
                region.run_id = run_id
                return None
            if run_id == known:
                return None
            reason = f"redis instance replaced: run_id {known[:12]} -> {run_id[:12]}"
            if region.state is RegionState.HEALTHY:
                self._mark_failed(region, self._clock(), reason, events)
            elif self.active == index:
                # Every region has failed and this one is the degraded choice: unverified
                # data is all there is, as for any command sent here now.
                return None
        self._dispatch(events)
        return reason

    # -- probing ----------------------------------------------------------------------

    def probes_due(self) -> tuple[list[int], float | None]:
        """(regions to probe now, seconds until the next probe is due or None).

        Failed regions are probed for failback; healthy ones are checked every
        ``probe_interval_s`` for another instance or a daemon's word against their data.
        """
        with self._lock:
            now = self._clock()
            due: list[int] = []
            next_at: float | None = None
            for region in self._regions:
                if region.next_probe_at <= now:
                    due.append(region.index)
                    # Not probed again before this probe reports (or a generous timeout).
                    region.next_probe_at = now + 3600.0
                elif next_at is None or region.next_probe_at < next_at:
                    next_at = region.next_probe_at
            return due, (None if next_at is None else max(0.0, next_at - now))

    def probe_result(
        self, index: int, *, ok: bool, reading: Reading | None = None, detail: str = ""
    ) -> None:
        """Report a probe of region `index`: it answered (`ok`), and what it read (None:
        the region answered but the record could not be read, e.g. ``NOPERM``)."""
        events: list[Event] = []
        with self._lock:
            now = self._clock()
            region = self._regions[index]
            if region.state is RegionState.HEALTHY:
                self._checked(region, now, (ok, reading, detail), events)
            else:
                self._probed(region, now, (ok, reading, detail), events)
        self._dispatch(events)

    def _probed(self, region: _Region, now: float, probe: _Probe, events: list[Event]) -> None:
        """A probe of a failed region: may it take traffic again?"""
        ok, reading, detail = probe
        policy = self.policy
        if ok:
            region.probes_ok += 1
            if region.ok_since is None:
                region.ok_since = now
            region.backoff.reset()
            region.next_probe_at = now + policy.probe_interval_s
            verdict = self._track_status(region, reading)
            if self._recovered(region, now):
                # The instance the gate just verified is the one whose data is trusted.
                region.run_id = None if reading is None else reading.run_id
                self._mark_healthy(region, now, verdict, events)
        else:
            region.probes_failed += 1
            region.ok_since = None
            region.status_confirmed = False
            region.next_probe_at = now + policy.probe_interval_s + region.backoff.next_delay()
            log.debug("probe failed region=%s detail=%s", region.name, detail)
        if all(r.state is RegionState.FAILED for r in self._regions):
            self._reselect("every region has failed; degraded choice", events)

    def _checked(self, region: _Region, now: float, probe: _Probe, events: list[Event]) -> None:
        """A check of a healthy region: is there positive evidence against its data?

        A check that fails says nothing the command path does not already count (the
        error rate decides about an unreachable region); it only backs off.
        """
        ok, reading, detail = probe
        policy = self.policy
        if not ok:
            region.next_probe_at = now + policy.probe_interval_s + region.backoff.next_delay()
            log.debug("status check failed region=%s detail=%s", region.name, detail)
            return
        region.backoff.reset()
        region.next_probe_at = now + policy.probe_interval_s
        if reading is None:
            return
        region.status = reading.status
        if reading.run_id is not None:
            if region.run_id is None:
                region.run_id = reading.run_id
            elif reading.run_id != region.run_id:
                reason = (
                    f"redis instance replaced: run_id {region.run_id[:12]} -> {reading.run_id[:12]}"
                )
                self._mark_failed(region, now, reason, events)
                return
        if not policy.require_consistent_status:
            return
        verdict = judge(region.name, reading)
        self._note(region, verdict)
        if verdict.against_data:
            self._mark_failed(region, now, f"status check: {verdict.reason}", events)

    def _note(self, region: _Region, verdict: Verdict) -> None:
        """Remember the finding; say it once when it changes (probes repeat every second)."""
        if verdict.finding is region.finding:
            return
        region.finding = verdict.finding
        quiet = (Finding.CONSISTENT, Finding.ABSENT, Finding.RECHECKING, Finding.NOT_CONSISTENT)
        level = logging.INFO if verdict.finding in quiet else logging.WARNING
        log.log(
            level,
            "status record region=%s finding=%s: %s",
            region.name,
            verdict.finding.value,
            verdict.reason,
        )

    # -- views ------------------------------------------------------------------------

    @property
    def active_name(self) -> str:
        """Name of the region receiving new commands."""
        return self.names[self.active]

    def state_of(self, index: int) -> RegionState:
        """The state of region `index`."""
        return self._regions[index].state

    def snapshot(self) -> RouterSnapshot:
        """A consistent copy of everything, for metrics and the Kafka stream."""
        with self._lock:
            now = self._clock()
            regions = tuple(
                RegionSnapshot(
                    name=r.name,
                    state=r.state,
                    stats=r.window.stats(now),
                    probing_ok_s=None if r.ok_since is None else now - r.ok_since,
                    hold_s=self._hold_s(r),
                    status=r.status,
                    status_confirmed=r.status_confirmed,
                    probes_ok=r.probes_ok,
                    probes_failed=r.probes_failed,
                    run_id=r.run_id,
                    finding=r.finding,
                )
                for r in self._regions
            )
            return RouterSnapshot(
                active=self.names[self.active],
                home=self.names[0],
                regions=regions,
                failovers=self.failovers,
                failbacks=self.failbacks,
                events=tuple(self._events),
                event_counts=tuple(
                    (kind, region, count)
                    for (kind, region), count in sorted(self._event_counts.items())
                ),
            )

    # -- transitions (lock held) ------------------------------------------------------

    def _hold_s(self, region: _Region) -> float:
        return self.policy.failback_healthy_s * float(1 << min(region.flaps, _MAX_FLAPS))

    def _track_status(self, region: _Region, reading: Reading | None) -> Verdict | None:
        status = None if reading is None else reading.status
        region.status = status
        if not self.policy.require_consistent_status:
            return None
        if reading is None:
            region.status_confirmed = False
            return None
        verdict = judge(region.name, reading)
        self._note(region, verdict)
        if region.status_baseline == _NO_BASELINE:
            # The first record seen after the failure may predate it, trusted or not: it
            # sets the bar that a vouching record's updated_ms must pass.
            region.status_baseline = -1 if status is None else status.updated_ms
            region.status_confirmed = False
        elif not verdict.vouches or status is None:
            region.status_confirmed = False
        elif status.updated_ms > region.status_baseline:
            region.status_confirmed = True
        return verdict

    def _recovered(self, region: _Region, now: float) -> bool:
        if region.ok_since is None or now - region.ok_since < self._hold_s(region):
            return False
        if not self.policy.require_consistent_status:
            return True
        return region.status_confirmed

    def _mark_failed(self, region: _Region, now: float, reason: str, events: list[Event]) -> None:
        window = self.policy.failback_healthy_s + self.policy.window_s
        if region.recovered_at is not None and now - region.recovered_at < window:
            region.flaps = min(region.flaps + 1, _MAX_FLAPS)
        else:
            region.flaps = 0
        region.state = RegionState.FAILED
        region.failed_at = now
        region.ok_since = None
        region.status = None
        region.status_baseline = _NO_BASELINE
        region.status_confirmed = False
        region.backoff.reset()
        region.next_probe_at = now  # probe at once: the clock for failback starts early
        region.window.reset(now)
        active = self.names[self.active]
        events.append(self._event("region_down", region.name, active, active, reason))
        self._reselect(reason, events)
        for wakeup in self._wakeups:
            wakeup()

    def _mark_healthy(
        self, region: _Region, now: float, verdict: Verdict | None, events: list[Event]
    ) -> None:
        healthy_for = 0.0 if region.ok_since is None else now - region.ok_since
        reason = f"probes answered for {healthy_for:.1f}s" + (
            f"; {verdict.reason} on instance {(region.run_id or '?')[:12]}" if verdict else ""
        )
        region.state = RegionState.HEALTHY
        region.recovered_at = now
        region.ok_since = None
        region.next_probe_at = now + self.policy.probe_interval_s
        region.window.reset(now)
        active = self.names[self.active]
        events.append(self._event("region_up", region.name, active, active, reason))
        self._reselect(reason, events)

    def _choose(self) -> int:
        for region in self._regions:
            if region.state is RegionState.HEALTHY:
                return region.index
        for region in self._regions:
            if region.ok_since is not None:
                return region.index
        return self.active

    def _reselect(self, reason: str, events: list[Event]) -> None:
        chosen = self._choose()
        if chosen == self.active:
            return
        previous = self.active
        self.active = chosen
        kind = "failback" if chosen < previous else "failover"
        if kind == "failback":
            self.failbacks += 1
        else:
            self.failovers += 1
        # The region an event is about: the one left behind, or the one returned to.
        about = self.names[chosen] if kind == "failback" else self.names[previous]
        events.append(self._event(kind, about, self.names[previous], self.names[chosen], reason))

    def _event(
        self, kind: str, region: str, from_region: str, to_region: str, reason: str
    ) -> Event:
        event = Event(kind, region, from_region, to_region, reason, self._wall_ms())
        self._events.append(event)
        self._event_counts[kind, region] += 1
        return event

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            log_event(
                log,
                f"client.{event.kind}",  # reconciler.events.CLIENT_*
                logging.WARNING,
                region=event.region,
                from_=event.from_region,
                to=event.to_region,
                reason=event.reason,
            )
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:  # a broken listener must not break commands
                    log.exception("client event listener failed kind=%s", event.kind)
