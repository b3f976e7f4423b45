"""Property tests: any valid spec survives XML; any junk gives a clean, typed error."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmhealth.domainxml import apply_spec, read_spec, remove_spec
from vmhealth.manifest import ManifestError, load_manifest
from vmhealth.spec import (
    Exec,
    GuestAgentPing,
    HealthSpec,
    HttpGet,
    LivenessAction,
    Probe,
    RunStrategy,
    Scheme,
    SpecError,
    TcpSocket,
    Watchdog,
    WatchdogAction,
    WatchdogModel,
    parse_spec,
    spec_to_dict,
)
from vmhealth.xmlsafe import XmlError

DOMAIN = """<domain type='test'>
  <name>prop</name>
  <memory>1024</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices/>
</domain>"""

# Any text XML 1.0 can carry (no control characters, no lone surrogates).
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
ports = st.integers(1, 65535)
hosts = st.none() | st.sampled_from(["10.0.0.5", "fd00::5", "guest.example"])
handlers = st.one_of(
    st.builds(HttpGet, port=ports, path=st.from_regex(r"/[a-z0-9/_.?=&-]{0,20}", fullmatch=True),
              host=hosts, scheme=st.sampled_from(Scheme),
              http_headers=st.lists(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}",
                                                             fullmatch=True),
                                              xml_text.filter(lambda v: "\r" not in v
                                                              and "\n" not in v
                                                              and "\x00" not in v)),
                                    max_size=3).map(tuple)),
    st.builds(TcpSocket, port=ports, host=hosts),
    st.builds(Exec, command=st.lists(xml_text.filter(lambda a: a and "\x00" not in a),
                                     min_size=1, max_size=4).map(tuple)),
    st.just(GuestAgentPing()),
)


@st.composite
def probes(draw, readiness=False):
    period = draw(st.integers(1, 300))
    # A timeout above the period is valid, as in Kubernetes (apply warns about it).
    return Probe(handler=draw(handlers), initial_delay_seconds=draw(st.integers(0, 600)),
                 period_seconds=period, timeout_seconds=draw(st.integers(1, 2 * period)),
                 success_threshold=draw(st.integers(1, 5)) if readiness else 1,
                 failure_threshold=draw(st.integers(1, 30)),
                 termination_grace_period_seconds=None if readiness else
                 draw(st.none() | st.integers(0, 600)))


specs = st.builds(
    HealthSpec,
    liveness_probe=st.none() | probes(),
    readiness_probe=st.none() | probes(readiness=True),
    startup_probe=st.none() | probes(),
    watchdog=st.none() | st.builds(Watchdog,
                                   name=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                                   model=st.sampled_from([WatchdogModel.I6300ESB,
                                                          WatchdogModel.IB700]),
                                   action=st.sampled_from(WatchdogAction)),
    termination_grace_period_seconds=st.integers(0, 3600),
    on_liveness_failure=st.sampled_from(LivenessAction),
    run_strategy=st.sampled_from(RunStrategy),
    guest_agent_ping_paused=st.booleans(),
    user_data=st.none() | xml_text.filter(lambda t: "\x00" not in t and "\r" not in t),
).filter(  # report leaves restarts to a cluster: refused with a restarting run strategy
    lambda spec: spec.on_liveness_failure is not LivenessAction.REPORT
    or spec.run_strategy in (RunStrategy.MANUAL, RunStrategy.HALTED, RunStrategy.ONCE))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_spec_round_trips_through_dict_and_xml(spec):
    assert parse_spec(spec_to_dict(spec)) == spec
    applied = apply_spec(DOMAIN, spec).xml
    assert read_spec(applied) == spec
    assert apply_spec(applied, spec).xml == applied
    assert read_spec(remove_spec(applied).xml) is None


@settings(max_examples=200)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_junk_xml_gives_xml_error(data):
    # Any other exception type (or a crash) fails the test.
    with contextlib.suppress(XmlError, SpecError):
        read_spec(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["livenessProbe", "readinessProbe", "startupProbe",
                                        "watchdog", "terminationGracePeriodSeconds",
                                        "onLivenessFailure", "runStrategy",
                                        "guestAgentPingPaused", "userData", "typo"]),
                       json_values, max_size=4))
def test_wrong_types_give_spec_error_with_a_path(data):
    try:
        parse_spec(data)
    except SpecError as exc:
        assert exc.path.startswith("spec")


@settings(max_examples=200)
@given(st.text(max_size=400))
def test_junk_yaml_gives_clean_error(text):
    with contextlib.suppress(ManifestError, SpecError):
        load_manifest(io.StringIO(text))


def test_yaml_alias_bomb_is_harmless():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    # safe_load shares aliased nodes instead of copying them, and validation stops at
    # the first unknown field, so this finishes at once with a clean error.
    with pytest.raises(SpecError, match="unknown field"):
        load_manifest(io.StringIO(bomb))
