"""Events the daemon records: a bounded ring buffer plus live subscribers.

Events are what an operator reads in `vmhealth events` (probe state flips, liveness
actions, watchdog fires, agent connects): they are kept in memory only, the newest
`capacity` of them, and also logged. A slow subscriber never slows the daemon: its
queue is bounded and it is dropped when the queue is full.

Guests are untrusted, and much of what is recorded is theirs to provoke (a readiness
that flaps, an agent started and stopped in a loop, a watchdog left to fire) or to
word (an exec's output, an agent's error). So, whatever the caller passed:

- every message is cut to MESSAGE_LIMIT printable characters and every string field
  to FIELD_LIMIT (vmhealth.excerpt): an event is a line, never megabytes of a
  guest's text or its terminal escape sequences;
- each domain has a token bucket of BURST events, refilled at REFILL_PER_MINUTE;
  beyond it a domain's events are counted, not recorded, and one `EventsSuppressed`
  event per SUMMARY_SECONDS says how many of which type were dropped. Events that
  record the daemon's own decisions (EXEMPT: liveness failures and actions, adoption,
  release) are never suppressed;
- when the ring is full, the event that goes is the oldest of the domain holding the
  most events, not the oldest overall: a flooding domain pushes out its own events,
  never another domain's LivenessFailed.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

from vmhealth.excerpt import excerpt
from vmhealth.monitor.logfmt import log_fields

log = logging.getLogger("vmhealth.events")

SUBSCRIBER_QUEUE = 1000
# A message may quote an error or an output line in full; a field is a name or a word.
MESSAGE_LIMIT = 1000
FIELD_LIMIT = 200
# A domain starting up records about five events (Adopted, AgentConnected, Started,
# Ready, Alive); 30 at once and one every 2 s after that leave a real incident whole
# while a guest toggling its agent in a loop is cut off after 30.
BURST = 30
REFILL_PER_MINUTE = 30
SUMMARY_SECONDS = 60.0
SUPPRESSED = "EventsSuppressed"
# The daemon's decisions: rare by construction (a liveness failure holds the probe
# until the domain's next run, restarts back off) and what an operator must see.
EXEMPT = frozenset({"LivenessFailed", "ActionSkipped", "LivenessAction",
                    "LivenessActionFailed", "RestartBackOff", "Adopted", "Released",
                    "SpecInvalid", "RunStrategyStart", "RunStrategySkipped",
                    "RunStrategyStartFailed", SUPPRESSED})
# Buckets of domains that have been quiet long enough are full again, the same as no
# bucket: they are dropped when this many are kept (a host's domains come and go).
BUCKETS_KEPT = 1024


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    domain: str
    type: str  # e.g. ReadinessChanged, LivenessFailed, Restarted, Watchdog, AgentConnected
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "domain": self.domain, "type": self.type,
                "message": self.message, **({"fields": self.fields} if self.fields else {})}


def bounded_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Numbers, booleans and None as they are; anything else as a bounded excerpt."""
    return {key: value if value is None or isinstance(value, (bool, int, float))
            else excerpt(value, FIELD_LIMIT) for key, value in fields.items()}


class _Bucket:
    """A token bucket: `burst` tokens, refilled continuously at `per_second`."""

    __slots__ = ("tokens", "at")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens, self.at = burst, now

    def take(self, burst: float, per_second: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * per_second)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def full(self, burst: float, per_second: float, now: float) -> bool:
        return self.tokens + (now - self.at) * per_second >= burst


@dataclass
class _Suppressed:
    since: float  # clock time of the first event dropped in this window
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


class _FairRing:
    """At most `capacity` events, kept per domain; full, it drops the oldest event of
    the domain with the most (of those, the one that got there first), in O(1)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.by_domain: dict[str, collections.deque[Event]] = {}
        # event count -> domains with that many, in the order they reached it
        self._with_count: dict[int, dict[str, None]] = collections.defaultdict(dict)
        self._top = 0

    def add(self, event: Event) -> None:
        if self.size >= self.capacity:
            self._evict()
        queue = self.by_domain.setdefault(event.domain, collections.deque())
        self._move(event.domain, len(queue), len(queue) + 1)
        queue.append(event)
        self.size += 1

    def _evict(self) -> None:
        domain = next(iter(self._with_count[self._top]))
        queue = self.by_domain[domain]
        queue.popleft()
        self.size -= 1
        self._move(domain, len(queue) + 1, len(queue))
        if not queue:
            del self.by_domain[domain]

    def _move(self, domain: str, old: int, new: int) -> None:
        if old:
            holders = self._with_count[old]
            del holders[domain]
            if not holders:
                del self._with_count[old]
                if self._top == old:
                    self._top = new  # counts move by one: the next count down or up
        if new:
            self._with_count[new][domain] = None
            self._top = max(self._top, new)

    def events(self, domain: str | None) -> Iterable[Event]:
        if domain is not None:
            return self.by_domain.get(domain, ())
        return heapq.merge(*self.by_domain.values(), key=lambda e: e.seq)


class EventLog:
    def __init__(self, capacity: int = 1000, *, burst: int = BURST,
                 refill_per_minute: float = REFILL_PER_MINUTE,
                 summary_seconds: float = SUMMARY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ring = _FairRing(capacity)
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._burst = burst
        self._per_second = refill_per_minute / 60.0
        self._summary_seconds = summary_seconds
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._prune_at = BUCKETS_KEPT
        self._suppressed: dict[str, _Suppressed] = {}

    def record(self, domain: str, type_: str, message: str, **fields: Any) -> Event | None:
        """Record an event; None when the domain is over its rate and it was dropped."""
        now = self._clock()
        self._flush_suppressed(now)
        if type_ not in EXEMPT and not self._take(domain, now):
            self._suppress(domain, type_, now)
            return None
        return self._append(domain, type_, excerpt(message, MESSAGE_LIMIT),
                            bounded_fields(fields))

    def _append(self, domain: str, type_: str, message: str, fields: dict[str, Any]) -> Event:
        event = Event(next(self._seq), time.time(), domain, type_, message, fields)
        self._ring.add(event)
        log.info("%s", message, extra=log_fields(event="record", domain=domain, type=type_,
                                                  **fields))
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A reader that cannot keep up loses its stream rather than our memory.
                self._cut(queue)
        return event

    # ------------------------------------------------------------------ rate limit
    def _take(self, domain: str, now: float) -> bool:
        bucket = self._buckets.get(domain)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune_buckets(now)
            bucket = self._buckets[domain] = _Bucket(self._burst, now)
        return bucket.take(self._burst, self._per_second, now)

    def _prune_buckets(self, now: float) -> None:
        self._buckets = {domain: bucket for domain, bucket in self._buckets.items()
                         if not bucket.full(self._burst, self._per_second, now)}
        # Many busy domains at once: prune again only once their number has doubled.
        self._prune_at = max(BUCKETS_KEPT, 2 * len(self._buckets))

    def _suppress(self, domain: str, type_: str, now: float) -> None:
        pending = self._suppressed.get(domain)
        if pending is None:
            pending = self._suppressed[domain] = _Suppressed(now)
            self._summary_timer(domain, pending)
        pending.counts[type_] += 1

    def _summary_timer(self, domain: str, pending: _Suppressed) -> None:
        """Say what was dropped even when the domain then falls silent (inside the
        daemon's loop; without one, the next record() or recent() does it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        def summarise() -> None:
            if self._suppressed.get(domain) is pending:  # not summarised meanwhile
                self._summarise(domain)
        loop.call_later(self._summary_seconds, summarise)

    def _flush_suppressed(self, now: float) -> None:
        for domain in [domain for domain, pending in self._suppressed.items()
                       if now - pending.since >= self._summary_seconds]:
            self._summarise(domain)

    def _summarise(self, domain: str) -> None:
        counts = self._suppressed.pop(domain).counts
        total = sum(counts.values())
        kinds = ", ".join(f"{type_} x{count}" for type_, count in counts.most_common())
        self._append(domain, SUPPRESSED,
                     excerpt(f"{total} events not recorded in the last "
                             f"{self._summary_seconds:g} s ({kinds}): more than {self._burst} "
                             f"at once or {self._per_second * 60:g} a minute", MESSAGE_LIMIT),
                     bounded_fields({"suppressed": total, "types": kinds}))

    # ------------------------------------------------------------------ reading
    def recent(self, domain: str | None = None, since: int = 0) -> list[Event]:
        self._flush_suppressed(self._clock())
        return [e for e in self._ring.events(domain) if e.seq > since]

    def subscribe(self) -> asyncio.Queue[Event | None]:
        """A queue of every later event; None in it means the stream was cut."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)

    def close(self) -> None:
        """End every stream (daemon stopping)."""
        for queue in list(self._subscribers):
            self._cut(queue)

    def _cut(self, queue: asyncio.Queue[Event | None]) -> None:
        """Unsubscribe and leave a None behind, making room for it if need be."""
        self._subscribers.discard(queue)
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(None)
