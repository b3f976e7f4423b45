"""The event ring against hostile guests: bounded text, per-domain rate, fair eviction."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import libvirt

from vmhealth.monitor import events as events_module
from vmhealth.monitor import logfmt
from vmhealth.monitor.events import BURST, FIELD_LIMIT, MESSAGE_LIMIT, EventLog
from vmhealth.monitor.lifecycle_events import LifecycleEvents
from vmhealth.monitor.logfmt import KeyValueFormatter, log_fields

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\r\n\x9b1m\x7f"
MEGABYTES = ("exit " + HOSTILE) * 300_000  # about 7 MB


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def printable(text: str) -> bool:
    return text.isprintable()


def test_messages_and_string_fields_are_bounded_and_printable():
    log = EventLog()
    event = log.record("web1", "LivenessFailed", MEGABYTES, probe=MEGABYTES, code=137,
                       ratio=0.5, flag=True, nothing=None, listed=[HOSTILE])
    assert len(event.message) <= MESSAGE_LIMIT + 3 and event.message.endswith("...")
    assert printable(event.message) and "pwned" in event.message
    assert len(event.fields["probe"]) <= FIELD_LIMIT + 3 and printable(event.fields["probe"])
    assert printable(event.fields["listed"])
    assert {k: event.fields[k] for k in ("code", "ratio", "flag", "nothing")} == \
        {"code": 137, "ratio": 0.5, "flag": True, "nothing": None}
    assert log.recent()[0] is event


def test_log_lines_never_hold_control_characters():
    record = logging.LogRecord("vmhealth.events", logging.INFO, __file__, 1, "%s",
                               (MEGABYTES,), None)
    record.__dict__.update(log_fields(domain="web\x1b[2J1", error=HOSTILE, count=3,
                                      nested={"x": HOSTILE}))
    line = KeyValueFormatter().format(record)
    assert printable(line), repr(line[:200])
    assert len(line) < 4 * 6 * logfmt.VALUE_LIMIT  # the megabytes are cut
    assert "domain=\"web\\u001b[2J1\"" in line and "count=3" in line
    assert "\\u007f" in line  # DEL too, which JSON leaves alone


def test_the_events_logged_are_printable(caplog):
    caplog.set_level(logging.INFO, "vmhealth.events")
    EventLog().record("web1", "NotReady", MEGABYTES, probe="readiness")
    formatted = KeyValueFormatter().format(caplog.records[-1])
    assert printable(formatted) and len(formatted) < 2 * MESSAGE_LIMIT


def test_a_domain_over_its_rate_is_cut_off_then_summarised():
    clock = Clock()
    log = EventLog(clock=clock)
    recorded = [log.record("evil", "AgentConnected", "guest agent connected")
                for _ in range(100)]
    assert sum(e is not None for e in recorded) == BURST
    # Its own liveness verdict still gets through, and other domains are untouched.
    assert log.record("evil", "LivenessFailed", "liveness failed") is not None
    assert log.record("web1", "NotReady", "readiness: refused") is not None
    clock.now += 2.0  # one token back (30 a minute)
    assert log.record("evil", "AgentDisconnected", "x") is not None
    assert log.record("evil", "AgentDisconnected", "x") is None
    assert not [e for e in log.recent("evil") if e.type == "EventsSuppressed"]
    clock.now += events_module.SUMMARY_SECONDS
    summary = [e for e in log.recent("evil") if e.type == "EventsSuppressed"]
    assert len(summary) == 1
    assert summary[0].fields["suppressed"] == 71
    assert "AgentConnected x70, AgentDisconnected x1" in summary[0].message


def test_the_summary_comes_even_when_the_flood_stops():
    async def scenario():
        log = EventLog(summary_seconds=0.05)
        queue = log.subscribe()
        for _ in range(BURST + 5):
            log.record("evil", "Watchdog", "watchdog fired")
        # Nothing else happens; the summary still reaches a follower.
        while True:
            event = await asyncio.wait_for(queue.get(), 10)
            if event.type == "EventsSuppressed":
                return event
    event = asyncio.run(scenario())
    assert event.domain == "evil" and event.fields["suppressed"] == 5


def test_a_flooding_domain_never_pushes_out_another_domains_liveness_failure():
    log = EventLog(10, burst=10**9)  # the ring alone, no rate limit
    kept = log.record("web2", "LivenessFailed", "liveness failed; action restart")
    log.record("web3", "Ready", "readiness: ok")
    for _ in range(10_000):
        log.record("evil", "AgentConnected", "guest agent connected")
    recent = log.recent()
    assert len(recent) == 10
    assert kept in recent and [e.domain for e in recent].count("evil") == 8
    assert [e.seq for e in recent] == sorted(e.seq for e in recent)


def test_with_the_defaults_a_flood_keeps_its_share_only():
    clock = Clock()
    log = EventLog(1000, clock=clock)
    kept = [log.record(f"web{i}", "LivenessFailed", "liveness failed") for i in range(50)]
    for _ in range(100_000):  # an agent toggled every 10 ms for 17 minutes
        clock.now += 0.01
        log.record("evil", "AgentConnected", "guest agent connected")
    recent = log.recent()
    assert all(event in recent for event in kept)
    assert sum(e.domain == "evil" for e in recent) < 1000 - 50


def test_eviction_takes_the_biggest_domain_and_among_equals_the_oldest():
    log = EventLog(3, burst=10**9)
    for name in ("a", "b", "c", "d"):
        log.record(name, "Ready", "ok")
    assert [e.domain for e in log.recent()] == ["b", "c", "d"]  # all equal: oldest goes
    log.record("b", "Ready", "again")
    assert [e.domain for e in log.recent()] == ["c", "d", "b"]
    log.record("b", "Ready", "again")
    assert [e.domain for e in log.recent()] == ["d", "b", "b"]
    log.record("b", "Ready", "again")  # b holds the most: its own oldest goes, not d
    assert [(e.domain, e.seq) for e in log.recent()] == [("d", 4), ("b", 6), ("b", 7)]


def test_buckets_of_quiet_domains_are_dropped():
    clock = Clock()
    log = EventLog(clock=clock)
    for i in range(events_module.BUCKETS_KEPT * 3):
        clock.now += 60  # each domain quiet long enough to be full again
        log.record(f"gone{i}", "Ready", "ok")
    assert len(log._buckets) <= events_module.BUCKETS_KEPT


def _agent_event(handlers: LifecycleEvents, uuid: str, state: int) -> None:
    dom = SimpleNamespace(UUIDString=lambda: uuid, name=lambda: f"dom-{uuid}")
    handlers.on_agent(None, dom, state, 1, None)


def test_agent_events_of_unmonitored_domains_are_not_recorded():
    recalled = []
    monitor = SimpleNamespace(access=SimpleNamespace(forget_addresses=lambda: None),
                              prober=SimpleNamespace(recall_lanes=lambda: recalled.append(1)))
    events = EventLog()
    handlers = LifecycleEvents(SimpleNamespace(monitors={"u-1": monitor}), None,
                               events=events, metrics=None, spec_defaults={},
                               spawn=None, is_stopping=lambda: False)
    connected = libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
    for _ in range(5):
        _agent_event(handlers, "u-other", connected)
    _agent_event(handlers, "u-1", connected)
    assert [(e.domain, e.type) for e in events.recent()] == \
        [("dom-u-1", "AgentConnected")]
    assert recalled == [1]
