"""Events the daemon records: a bounded ring buffer plus live subscribers.

Events are what an operator reads in `vmhealth events` (probe state flips, liveness
actions, watchdog fires, agent connects): they are kept in memory only, the newest
`capacity` of them, and also logged. A slow subscriber never slows the daemon: its
queue is bounded and it is dropped when the queue is full.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from vmhealth.monitor.logfmt import log_fields

log = logging.getLogger("vmhealth.events")

SUBSCRIBER_QUEUE = 1000


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


class EventLog:
    def __init__(self, capacity: int = 1000) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def record(self, domain: str, type_: str, message: str, **fields: Any) -> Event:
        event = Event(next(self._seq), time.time(), domain, type_, message, fields)
        self._events.append(event)
        log.info("%s", message, extra=log_fields(event="record", domain=domain, type=type_,
                                                  **fields))
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A reader that cannot keep up loses its stream rather than our memory.
                self._cut(queue)
        return event

    def recent(self, domain: str | None = None, since: int = 0) -> list[Event]:
        return [e for e in self._events
                if e.seq > since and (domain is None or e.domain == domain)]

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
