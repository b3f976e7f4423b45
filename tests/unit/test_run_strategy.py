"""Run strategies, daemon side: why a run ended (stop_cause, StopClues) and whether the
strategy starts the domain again (decide, verdict). Every strategy against every
cause, and every combination of what libvirt can report about a stop."""

from __future__ import annotations

import itertools

import libvirt
import pytest

from vmhealth.monitor.adoption import InvalidSpec
from vmhealth.monitor.run_strategy import (
    FAILURES,
    OPERATORS,
    OWN_POWEROFF,
    OWN_RESTART,
    StopCause,
    StopClues,
    decide,
    stop_cause,
    verdict,
)
from vmhealth.spec import RunStrategy, parse_spec

C = StopCause
# KubeVirt's meaning (README, "Run strategies"), written out case by case: which
# causes start the domain again under each strategy. Nothing else does.
STARTS = {
    "Always": {C.GUEST_SHUTDOWN, C.CRASHED, C.FAILED, C.WATCHDOG, C.LIVENESS_POWEROFF},
    "RerunOnFailure": {C.CRASHED, C.FAILED, C.WATCHDOG, C.LIVENESS_POWEROFF},
    "Manual": set(),
    "Halted": set(),
    "Once": set(),
}

STOPPED = {
    "shutdown": libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
    "destroyed": libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
    "crashed": libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
    "migrated": libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
    "saved": libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED,
    "failed": libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
    "from_snapshot": libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT,
    "future": 99,  # a detail a later libvirt may add
}
SHUTDOWN_DETAILS = (None, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
                    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST,
                    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
WATCHDOG = (None, "poweroff", "shutdown")
OWN = (None, OWN_RESTART, OWN_POWEROFF)
EVERY_STOP = list(itertools.product(STOPPED.values(), SHUTDOWN_DETAILS, WATCHDOG, OWN))


def test_the_table_covers_every_strategy_and_cause():
    assert set(STARTS) == {s.value for s in RunStrategy}
    assert FAILURES | OPERATORS | {C.GUEST_SHUTDOWN, C.LIVENESS_RESTART} == set(StopCause)
    assert not FAILURES & OPERATORS


@pytest.mark.parametrize("strategy", list(RunStrategy), ids=lambda s: s.value)
@pytest.mark.parametrize("cause", list(StopCause), ids=lambda c: c.value)
def test_decide_every_strategy_against_every_cause(strategy, cause):
    decision = decide(strategy, cause)
    assert decision.start is (cause in STARTS[strategy.value])
    if decision.start:
        assert decision.reason == f"runStrategy {strategy.value}: {cause.text}"
    elif cause.is_operators:
        assert decision.reason.endswith("an operator's stop is never undone")
    elif cause is C.LIVENESS_RESTART:
        assert decision.reason == "left to the liveness restart in flight"
    else:
        assert decision.reason.startswith(f"runStrategy {strategy.value} leaves it off")


def test_decide_agrees_with_the_spec_side_meaning():
    """spec_rules.RUN_STRATEGY_RESTARTS is the one home of the meaning: decide reads it."""
    for strategy in RunStrategy:
        assert decide(strategy, C.CRASHED).start is strategy.restarts_after_failure
        assert decide(strategy, C.GUEST_SHUTDOWN).start is \
            strategy.restarts_after_guest_shutdown


@pytest.mark.parametrize(("detail", "cause"), [
    ("shutdown", C.GUEST_SHUTDOWN),  # no SHUTDOWN event seen: the guest's, as libvirt's default
    ("destroyed", C.DESTROYED),
    ("crashed", C.CRASHED),
    ("migrated", C.MIGRATED),
    ("saved", C.SAVED),
    ("failed", C.FAILED),
    ("from_snapshot", C.FROM_SNAPSHOT),
    ("future", C.UNKNOWN),
])
def test_stop_cause_from_the_stopped_detail_alone(detail, cause):
    assert stop_cause(STOPPED[detail]) is cause


@pytest.mark.parametrize(("shutdown_detail", "cause"), [
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST, C.GUEST_SHUTDOWN),
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED, C.GUEST_SHUTDOWN),
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST, C.HOST_SHUTDOWN),
])
def test_the_shutdown_event_says_who_asked(shutdown_detail, cause):
    assert stop_cause(STOPPED["shutdown"], shutdown_detail=shutdown_detail) is cause


@pytest.mark.parametrize("action", ["poweroff", "shutdown"])
def test_a_watchdog_action_before_the_stop_makes_it_the_watchdogs(action):
    # poweroff: QEMU exits at once, libvirt reports FAILED; shutdown: ACPI, the guest
    # shuts down, libvirt reports SHUTDOWN (guest).
    assert stop_cause(STOPPED["failed"], watchdog_action=action) is C.WATCHDOG
    assert stop_cause(STOPPED["shutdown"], watchdog_action=action,
                      shutdown_detail=libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST) is C.WATCHDOG
    assert stop_cause(STOPPED["crashed"], watchdog_action=action) is C.CRASHED


def test_our_own_liveness_actions():
    assert stop_cause(STOPPED["destroyed"], own_action=OWN_POWEROFF) is C.LIVENESS_POWEROFF
    # It went down by itself while our destroy was on its way: still a failure.
    assert stop_cause(STOPPED["shutdown"], own_action=OWN_POWEROFF) is C.LIVENESS_POWEROFF
    assert stop_cause(STOPPED["destroyed"], own_action=OWN_RESTART) is C.LIVENESS_RESTART
    assert stop_cause(STOPPED["shutdown"], own_action=OWN_RESTART) is C.LIVENESS_RESTART


@pytest.mark.parametrize(("detail", "shutdown_detail", "watchdog", "own"), EVERY_STOP)
def test_every_combination_never_fights_the_operator(detail, shutdown_detail, watchdog, own):
    cause = stop_cause(detail, shutdown_detail=shutdown_detail, watchdog_action=watchdog,
                       own_action=own)
    assert isinstance(cause, StopCause)
    starts = {s for s in RunStrategy if decide(s, cause).start}
    if own == OWN_RESTART:
        assert cause is C.LIVENESS_RESTART and not starts  # the restart starts it itself
        return
    operators = {STOPPED["saved"], STOPPED["migrated"], STOPPED["from_snapshot"],
                 STOPPED["future"]}
    if detail in operators or (detail == STOPPED["destroyed"] and own is None):
        assert cause.is_operators and not starts, cause
    if detail == STOPPED["shutdown"] and shutdown_detail == \
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST and own is None:
        assert cause is C.HOST_SHUTDOWN and not starts
    if cause.is_failure:
        assert starts == {RunStrategy("Always"), RunStrategy("RerunOnFailure")}
    # Manual, Halted and Once never start anything, whatever the stop.
    assert starts <= {RunStrategy("Always"), RunStrategy("RerunOnFailure")}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


UUID = "6695eb01-f6a4-8304-79aa-97f2502e3001"


def test_clues_a_watchdog_counts_within_the_window_only():
    clock = Clock()
    clues = StopClues(clock, window=120)
    clues.watchdog(UUID, "poweroff")
    clock.now += 120
    assert clues.stopped(UUID, STOPPED["failed"]) is C.WATCHDOG
    clues.watchdog(UUID, "poweroff")
    clock.now += 121
    assert clues.stopped(UUID, STOPPED["failed"]) is C.FAILED


@pytest.mark.parametrize("action", ["reset", "pause", "none", "dump", "inject-nmi", "7"])
def test_clues_watchdog_actions_that_do_not_stop_are_no_clue(action):
    clues = StopClues(Clock())
    clues.watchdog(UUID, action)
    assert clues.stopped(UUID, STOPPED["shutdown"]) is C.GUEST_SHUTDOWN


def test_clues_belong_to_one_run():
    clues = StopClues(Clock())
    clues.watchdog(UUID, "poweroff")
    clues.shutdown_begun(UUID, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
    clues.own_stop(UUID, OWN_POWEROFF)
    clues.started(UUID)  # a new run: what the last one saw is gone
    assert clues.stopped(UUID, STOPPED["shutdown"]) is C.GUEST_SHUTDOWN
    clues.shutdown_begun(UUID, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
    assert clues.stopped(UUID, STOPPED["shutdown"]) is C.HOST_SHUTDOWN
    assert clues.stopped(UUID, STOPPED["shutdown"]) is C.GUEST_SHUTDOWN  # used up
    assert not clues._runs


def test_clues_of_departed_domains_are_forgotten():
    clues = StopClues(Clock())
    for n in range(3):
        clues.own_stop(f"{UUID[:-1]}{n}", OWN_RESTART)
    clues.retain({f"{UUID[:-1]}1"})
    assert set(clues._runs) == {f"{UUID[:-1]}1"}


class FakeDomain:
    def __init__(self, *, persistent=True, active=False, gone=False) -> None:
        self.persistent, self.active, self.gone = persistent, active, gone

    def _check(self) -> None:
        if self.gone:
            error = libvirt.libvirtError("Domain not found")
            error.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found", 0, "", None,
                         None, 0, 0)
            raise error

    def isPersistent(self) -> bool:  # noqa: N802 - libvirt's name
        self._check()
        return self.persistent

    def isActive(self) -> bool:  # noqa: N802 - libvirt's name
        self._check()
        return self.active


def spec(strategy: str):
    return parse_spec({"watchdog": {"action": "poweroff"}, "runStrategy": strategy})


def test_verdict_starts_a_stopped_persistent_domain_its_strategy_restarts():
    result = verdict(FakeDomain(), C.WATCHDOG, lambda dom: spec("Always"))
    assert (result.start, result.strategy, result.noteworthy) == (True, "Always", True)
    assert result.reason == "runStrategy Always: the watchdog stopped it"


def test_verdict_leaves_off_and_says_why():
    manual = verdict(FakeDomain(), C.WATCHDOG, lambda dom: spec("Manual"))
    assert (manual.start, manual.noteworthy) == (False, False)  # today's behaviour: no word
    destroyed = verdict(FakeDomain(), C.DESTROYED, lambda dom: spec("Always"))
    assert (destroyed.start, destroyed.noteworthy) == (False, True)
    assert "never undone" in destroyed.reason


@pytest.mark.parametrize(("domain", "reason"), [
    (FakeDomain(gone=True), "undefined: nothing to start again"),
    (FakeDomain(persistent=False), "transient domain: nothing to start again"),
    (FakeDomain(active=True), "already running"),
])
def test_verdict_never_starts_a_domain_that_is_gone_transient_or_running(domain, reason):
    result = verdict(domain, C.CRASHED, lambda dom: spec("Always"))
    assert (result.start, result.reason) == (False, reason)


def test_verdict_without_a_usable_spec_starts_nothing():
    assert verdict(FakeDomain(), C.CRASHED, lambda dom: None).start is False

    def invalid(dom):
        raise InvalidSpec("metadata.spec.runStrategy: must be one of ...")
    result = verdict(FakeDomain(), C.CRASHED, invalid)
    assert result.start is False and "runStrategy" in result.reason


def test_verdict_passes_other_libvirt_errors_on():
    class Broken(FakeDomain):
        def isPersistent(self):  # noqa: N802 - libvirt's name
            error = libvirt.libvirtError("connection closed")
            error.err = (libvirt.VIR_ERR_SYSTEM_ERROR, 0, "closed", 0, "", None, None, 0, 0)
            raise error
    with pytest.raises(libvirt.libvirtError):
        verdict(Broken(), C.CRASHED, lambda dom: spec("Always"))
