"""vmhealth.spec_rules, rule by rule: every refusal with its exact path and message,
every default and every boundary (written for mutation testing, docs/testing.md: a
rule or a word of a message that changes must fail a test)."""

from __future__ import annotations

import pytest

from vmhealth import spec_rules
from vmhealth.spec_rules import SpecError, SpecWarning, check_spec

MAX = 2**31 - 1
HANDLER_LIST = "httpGet, tcpSocket, exec, guestAgentPing"
SPEC_ALLOWED = ("guestAgentPingPaused, livenessProbe, onLivenessFailure, readinessProbe, "
                "runStrategy, startupProbe, terminationGracePeriodSeconds, userData, "
                "watchdog")
PROBE_ALLOWED = ("exec, failureThreshold, guestAgentPing, httpGet, initialDelaySeconds, "
                 "periodSeconds, successThreshold, tcpSocket, terminationGracePeriodSeconds, "
                 "timeoutSeconds")
NAMED_PORT_HELP = ("port names come from a KubeVirt manifest's "
                   "spec.domain.devices.interfaces[].ports[], which a vmhealth spec does "
                   "not have; write the port number")


def refusal(data: object, **kwargs) -> tuple[str, str]:
    """(path, whole message) of the SpecError check_spec raises for `data`."""
    with pytest.raises(SpecError) as caught:
        check_spec(data, **kwargs)
    error = caught.value
    assert str(error) == f"{error.path}: {error.message}"
    return error.path, str(error)


def live(probe: dict) -> dict:
    return {"livenessProbe": probe}


def http(**fields) -> dict:
    return live({"httpGet": {"port": 80, **fields}})


REFUSALS = [
    # the spec itself
    ([1], "spec: must be a mapping, not a list"),
    ({1: 2}, "spec: keys must be strings, not an integer (1)"),
    ({"bogus": 1}, f"spec.bogus: unknown field; allowed: {SPEC_ALLOWED}"),
    ({"terminationGracePeriodSeconds": -1},
     "spec.terminationGracePeriodSeconds: must be between 0 and 2147483647, got -1"),
    ({"terminationGracePeriodSeconds": MAX + 1},
     "spec.terminationGracePeriodSeconds: must be between 0 and 2147483647, got 2147483648"),
    ({"terminationGracePeriodSeconds": True},
     "spec.terminationGracePeriodSeconds: must be an integer, not a boolean (True)"),
    ({"terminationGracePeriodSeconds": "5"},
     "spec.terminationGracePeriodSeconds: must be an integer, not a string ('5')"),
    ({"userData": 5}, "spec.userData: must be a string, not an integer"),
    ({"userData": "a\x00b"}, "spec.userData: must not contain NUL characters"),
    ({"onLivenessFailure": "explode"},
     "spec.onLivenessFailure: must be one of restart, reset, poweroff, none, report, "
     "got 'explode'"),
    ({"onLivenessFailure": ""}, "spec.onLivenessFailure: must not be empty"),
    ({"guestAgentPingPaused": "yes"},
     "spec.guestAgentPingPaused: must be true or false, not a string ('yes')"),
    ({"guestAgentPingPaused": 1},
     "spec.guestAgentPingPaused: must be true or false, not an integer (1)"),
    ({"runStrategy": "Sometimes"},
     "spec.runStrategy: must be one of Always, RerunOnFailure, Manual, Halted, Once, "
     "got 'Sometimes'"),
    ({"runStrategy": "WaitAsReceiver"},
     "spec.runStrategy: WaitAsReceiver waits for a KubeVirt decentralized live migration, "
     "which plain libvirt has no counterpart of; use one of Always, RerunOnFailure, "
     "Manual, Halted, Once (README, Run strategies)"),
    ({"runStrategy": 3}, "spec.runStrategy: must be a string, not an integer"),
    ({"onLivenessFailure": "report", "runStrategy": "Always"},
     "spec.runStrategy: Always starts the domain again, but onLivenessFailure: report "
     "leaves that to the cluster; use Manual (docs/cluster.md)"),
    ({"onLivenessFailure": "report", "runStrategy": "RerunOnFailure"},
     "spec.runStrategy: RerunOnFailure starts the domain again, but onLivenessFailure: "
     "report leaves that to the cluster; use Manual (docs/cluster.md)"),
    # watchdog
    ({"watchdog": []}, "spec.watchdog: must be a mapping, not a list"),
    ({"watchdog": {"timer": 5}},
     "spec.watchdog.timer: unknown field; allowed: action, model, name"),
    ({"watchdog": {"name": ""}}, "spec.watchdog.name: must not be empty"),
    ({"watchdog": {"name": None}}, "spec.watchdog.name: must be a string, not null"),
    ({"watchdog": {"model": "x"}},
     "spec.watchdog.model: must be one of i6300esb, ib700, diag288, itco, got 'x'"),
    # probes: structure
    (live([]), "spec.livenessProbe: must be a mapping, not a list"),
    (live({}), f"spec.livenessProbe: must have exactly one handler of {HANDLER_LIST} "
               "(found: none)"),
    (live({"httpGet": {"port": 1}, "tcpSocket": {"port": 1}}),
     f"spec.livenessProbe: must have exactly one handler of {HANDLER_LIST} "
     "(found: httpGet, tcpSocket)"),
    (live({"grpc": {"port": 1}}),
     "spec.livenessProbe.grpc: gRPC probes are not supported; use httpGet, tcpSocket, "
     "exec or guestAgentPing"),
    (live({"tcpSocket": {"port": 1}, "bogus": 1}),
     f"spec.livenessProbe.bogus: unknown field; allowed: {PROBE_ALLOWED}"),
    # probes: timing
    (live({"guestAgentPing": {}, "initialDelaySeconds": -1}),
     "spec.livenessProbe.initialDelaySeconds: must be between 0 and 2147483647, got -1"),
    (live({"guestAgentPing": {}, "periodSeconds": -1}),
     "spec.livenessProbe.periodSeconds: must be between 1 and 2147483647 (or 0 for the "
     "default, 10), got -1"),
    (live({"guestAgentPing": {}, "timeoutSeconds": -2}),
     "spec.livenessProbe.timeoutSeconds: must be between 1 and 2147483647 (or 0 for the "
     "default, 1), got -2"),
    (live({"guestAgentPing": {}, "failureThreshold": -1}),
     "spec.livenessProbe.failureThreshold: must be between 1 and 2147483647 (or 0 for the "
     "default, 3), got -1"),
    (live({"guestAgentPing": {}, "periodSeconds": MAX + 1}),
     "spec.livenessProbe.periodSeconds: must be between 0 and 2147483647, got 2147483648"),
    (live({"guestAgentPing": {}, "periodSeconds": True}),
     "spec.livenessProbe.periodSeconds: must be an integer, not a boolean (True)"),
    (live({"guestAgentPing": {}, "periodSeconds": 1.5}),
     "spec.livenessProbe.periodSeconds: must be an integer, not a number (1.5)"),
    (live({"guestAgentPing": {}, "terminationGracePeriodSeconds": -1}),
     "spec.livenessProbe.terminationGracePeriodSeconds: must be between 0 and 2147483647, "
     "got -1"),
    # handlers
    (live({"guestAgentPing": {"x": 1}}),
     "spec.livenessProbe.guestAgentPing.x: unknown field; allowed: none"),
    (live({"guestAgentPing": []}), "spec.livenessProbe.guestAgentPing: must be a mapping, "
                                   "not a list"),
    (live({"tcpSocket": {}}),
     "spec.livenessProbe.tcpSocket.port: is required (the guest's port, 1..65535)"),
    (live({"tcpSocket": {"port": 22, "path": "/"}}),
     "spec.livenessProbe.tcpSocket.path: unknown field; allowed: host, port"),
    (live({"tcpSocket": {"port": 0}}),
     "spec.livenessProbe.tcpSocket.port: must be between 1 and 65535, got 0"),
    (live({"tcpSocket": {"port": 65536}}),
     "spec.livenessProbe.tcpSocket.port: must be between 1 and 65535, got 65536"),
    (live({"tcpSocket": {"port": None}}),
     "spec.livenessProbe.tcpSocket.port: must be an integer, not null (None)"),
    (live({"tcpSocket": {"port": [22]}}),
     "spec.livenessProbe.tcpSocket.port: must be an integer, not a list ([22])"),
    (live({"tcpSocket": {"port": {"n": 22}}}),
     "spec.livenessProbe.tcpSocket.port: must be an integer, not a mapping ({'n': 22})"),
    (live({"tcpSocket": {"port": (22,)}}),
     "spec.livenessProbe.tcpSocket.port: must be an integer, not tuple ((22,))"),
    (live({"tcpSocket": {"port": "22"}}),
     "spec.livenessProbe.tcpSocket.port: must be a port number 1..65535, got the string "
     "'22'; write it without quotes"),
    (live({"tcpSocket": {"port": "ssh"}}),
     "spec.livenessProbe.tcpSocket.port: must be a port number 1..65535, got the name "
     f"'ssh': {NAMED_PORT_HELP}"),
    (live({"tcpSocket": {"port": 22, "host": "a b"}}),
     "spec.livenessProbe.tcpSocket.host: must be a host name or IP address, got 'a b'"),
    (live({"tcpSocket": {"port": 22, "host": "a\tb"}}),
     "spec.livenessProbe.tcpSocket.host: must be a host name or IP address, got 'a\\tb'"),
    (live({"tcpSocket": {"port": 22, "host": "a/b"}}),
     "spec.livenessProbe.tcpSocket.host: must be a host name or IP address, got 'a/b'"),
    (live({"tcpSocket": {"port": 22, "host": 5}}),
     "spec.livenessProbe.tcpSocket.host: must be a string, not an integer"),
    (live({"exec": {}}), "spec.livenessProbe.exec.command: must be a non-empty list: the "
                         "program and its arguments, e.g. [\"cat\", \"/tmp/healthy.txt\"]"),
    (live({"exec": {"command": []}}),
     "spec.livenessProbe.exec.command: must be a non-empty list: the program and its "
     "arguments, e.g. [\"cat\", \"/tmp/healthy.txt\"]"),
    (live({"exec": {"command": "true"}}),
     "spec.livenessProbe.exec.command: must be a non-empty list: the program and its "
     "arguments, e.g. [\"cat\", \"/tmp/healthy.txt\"]"),
    (live({"exec": {"command": ["true"], "env": []}}),
     "spec.livenessProbe.exec.env: unknown field; allowed: command"),
    (live({"exec": {"command": [""]}}), "spec.livenessProbe.exec.command[0]: must not be "
                                        "empty"),
    (live({"exec": {"command": ["cat", 5]}}),
     "spec.livenessProbe.exec.command[1]: must be a string, not an integer"),
    (live({"httpGet": {}}),
     "spec.livenessProbe.httpGet.port: is required (the guest's port, 1..65535)"),
    (live({"httpGet": []}), "spec.livenessProbe.httpGet: must be a mapping, not a list"),
    (live({"tcpSocket": 22}), "spec.livenessProbe.tcpSocket: must be a mapping, not an "
                              "integer"),
    (live({"exec": "true"}), "spec.livenessProbe.exec: must be a mapping, not a string"),
    (http(url="/"), "spec.livenessProbe.httpGet.url: unknown field; allowed: host, "
                    "httpHeaders, path, port, scheme"),
    (http(path=5), "spec.livenessProbe.httpGet.path: must be a string, not an integer"),
    (http(path="/a b"), "spec.livenessProbe.httpGet.path: must not contain spaces or line "
                        "breaks"),
    (http(path="/a\rb"), "spec.livenessProbe.httpGet.path: must not contain spaces or line "
                         "breaks"),
    (http(path="/a\nb"), "spec.livenessProbe.httpGet.path: must not contain spaces or line "
                         "breaks"),
    (http(scheme="FTP"), "spec.livenessProbe.httpGet.scheme: must be one of HTTP, HTTPS, "
                         "got 'FTP'"),
    (http(scheme="http"), "spec.livenessProbe.httpGet.scheme: must be one of HTTP, HTTPS, "
                          "got 'http'"),
    (http(httpHeaders={"name": "A"}),
     "spec.livenessProbe.httpGet.httpHeaders: must be a list of {name, value} mappings"),
    (http(httpHeaders=["A: 1"]),
     "spec.livenessProbe.httpGet.httpHeaders[0]: must be a mapping, not a string"),
    (http(httpHeaders=[{"name": "A", "value": "1", "x": 2}]),
     "spec.livenessProbe.httpGet.httpHeaders[0].x: unknown field; allowed: name, value"),
    (http(httpHeaders=[{"name": "A"}, {"value": "1"}]),
     "spec.livenessProbe.httpGet.httpHeaders[1].name: must be a string, not null"),
    (http(httpHeaders=[{"name": "A", "value": "1\r\nB: 2"}]),
     "spec.livenessProbe.httpGet.httpHeaders[0].value: must not contain line breaks"),
    (http(httpHeaders=[{"name": "A", "value": 1}]),
     "spec.livenessProbe.httpGet.httpHeaders[0].value: must be a string, not an integer"),
    # the headers are checked before the port, the port before host and scheme
    (live({"httpGet": {"port": 0, "host": "a b", "scheme": "x",
                       "httpHeaders": [{"name": "A", "value": "\n"}]}}),
     "spec.livenessProbe.httpGet.httpHeaders[0].value: must not contain line breaks"),
    (live({"httpGet": {"port": 0, "host": "a b", "scheme": "x"}}),
     "spec.livenessProbe.httpGet.port: must be between 1 and 65535, got 0"),
    (live({"httpGet": {"port": 80, "host": "a b", "scheme": "x"}}),
     "spec.livenessProbe.httpGet.host: must be a host name or IP address, got 'a b'"),
]


@pytest.mark.parametrize("data,message", REFUSALS)
def test_each_refusal_names_its_field_and_the_fix(data, message):
    assert refusal(data)[1] == message


def test_the_first_failing_probe_kind_is_reported_in_the_rules_order():
    bad = {"tcpSocket": {"port": 0}}
    both = {"readinessProbe": bad, "livenessProbe": bad, "startupProbe": bad}
    assert refusal(both)[0] == "spec.livenessProbe.tcpSocket.port"
    assert refusal({"readinessProbe": bad, "startupProbe": bad})[0] == (
        "spec.readinessProbe.tcpSocket.port")


def test_a_spec_under_another_path_names_its_fields_there():
    assert refusal({"bogus": 1}, path="spec.template.spec")[0] == "spec.template.spec.bogus"


# -- what is accepted, and its checked form ------------------------------------

def test_the_empty_spec_gets_every_default():
    assert check_spec({}) == {
        "liveness_probe": None, "readiness_probe": None, "startup_probe": None,
        "watchdog": None, "termination_grace_period_seconds": 30,
        "on_liveness_failure": "restart", "run_strategy": "Manual",
        "guest_agent_ping_paused": False, "user_data": None}


def test_nulls_read_as_omitted_fields():
    nulls = dict.fromkeys(spec_rules.SPEC_FIELDS)
    del nulls["onLivenessFailure"]  # not optional: null is not a liveness action
    assert check_spec(nulls) == check_spec({})


def test_every_spec_field_given():
    checked = check_spec({
        "watchdog": {"name": "wd", "model": "diag288", "action": "inject-nmi"},
        "terminationGracePeriodSeconds": 0, "onLivenessFailure": "none",
        "runStrategy": "Always", "guestAgentPingPaused": True, "userData": ""})
    assert checked["watchdog"] == {"name": "wd", "model": "diag288", "action": "inject-nmi"}
    assert checked["termination_grace_period_seconds"] == 0
    assert checked["on_liveness_failure"] == "none"
    assert checked["run_strategy"] == "Always"
    assert checked["guest_agent_ping_paused"] is True
    assert checked["user_data"] == ""
    assert check_spec({"terminationGracePeriodSeconds": MAX})[
        "termination_grace_period_seconds"] == MAX
    assert check_spec({"guestAgentPingPaused": False})["guest_agent_ping_paused"] is False


def test_the_watchdog_defaults():
    assert check_spec({"watchdog": {}})["watchdog"] == {
        "name": "watchdog", "model": "i6300esb", "action": "reset"}


@pytest.mark.parametrize("strategy", spec_rules.RUN_STRATEGIES)
def test_every_run_strategy_is_accepted(strategy):
    assert check_spec({"runStrategy": strategy})["run_strategy"] == strategy


@pytest.mark.parametrize("strategy", ["Manual", "Halted", "Once"])
def test_report_goes_with_the_run_strategies_that_never_start_the_domain(strategy):
    checked = check_spec({"onLivenessFailure": "report", "runStrategy": strategy})
    assert (checked["on_liveness_failure"], checked["run_strategy"]) == ("report", strategy)
    assert check_spec({"onLivenessFailure": "report"})["run_strategy"] == "Manual"


def test_a_probe_gets_every_timing_default():
    assert check_spec(live({"guestAgentPing": None}))["liveness_probe"] == {
        "handler": ("guestAgentPing", {}), "initial_delay_seconds": 0, "period_seconds": 10,
        "timeout_seconds": 1, "success_threshold": 1, "failure_threshold": 3,
        "termination_grace_period_seconds": None}


def test_zero_means_the_default_where_kubernetes_says_so_and_only_there():
    zeros = {"initialDelaySeconds": 0, "periodSeconds": 0, "timeoutSeconds": 0,
             "successThreshold": 0, "failureThreshold": 0, "terminationGracePeriodSeconds": 0}
    probe = check_spec(live({"guestAgentPing": {}, **zeros}))["liveness_probe"]
    assert (probe["initial_delay_seconds"], probe["period_seconds"], probe["timeout_seconds"],
            probe["success_threshold"], probe["failure_threshold"],
            probe["termination_grace_period_seconds"]) == (0, 10, 1, 1, 3, 0)


def test_every_timing_field_given():
    timing = {"initialDelaySeconds": 7, "periodSeconds": 9, "timeoutSeconds": 4,
              "successThreshold": 2, "failureThreshold": 5}
    probe = check_spec({"readinessProbe": {"guestAgentPing": {}, **timing}})["readiness_probe"]
    assert (probe["initial_delay_seconds"], probe["period_seconds"], probe["timeout_seconds"],
            probe["success_threshold"], probe["failure_threshold"]) == (7, 9, 4, 2, 5)
    most = check_spec(live({"guestAgentPing": {}, "periodSeconds": MAX,
                            "initialDelaySeconds": MAX}))["liveness_probe"]
    assert most["period_seconds"] == most["initial_delay_seconds"] == MAX
    timing_nulls = dict.fromkeys(timing)
    assert check_spec(live({"guestAgentPing": {}, **timing_nulls})) == check_spec(
        live({"guestAgentPing": {}}))


def test_the_handlers_checked_forms():
    assert check_spec(live({"tcpSocket": {"port": 1}}))["liveness_probe"]["handler"] == (
        "tcpSocket", {"port": 1, "host": None})
    assert check_spec(live({"tcpSocket": {"port": 65535, "host": "db.example"}}))[
        "liveness_probe"]["handler"] == ("tcpSocket", {"port": 65535, "host": "db.example"})
    assert check_spec(live({"tcpSocket": {"port": 22, "host": ""}}))["liveness_probe"][
        "handler"][1]["host"] is None
    assert check_spec(live({"exec": {"command": ["sh", "", "-c"]}}))["liveness_probe"][
        "handler"] == ("exec", {"command": ("sh", "", "-c")})
    assert check_spec(http())["liveness_probe"]["handler"] == ("httpGet", {
        "port": 80, "path": "/", "host": None, "scheme": "HTTP", "http_headers": ()})
    given = http(path="/healthz", host="10.0.0.1", scheme="HTTPS", httpHeaders=[
        {"name": "X-A", "value": "1"}, {"name": "X-Empty"}])
    assert check_spec(given)["liveness_probe"]["handler"] == ("httpGet", {
        "port": 80, "path": "/healthz", "host": "10.0.0.1", "scheme": "HTTPS",
        "http_headers": (("X-A", "1"), ("X-Empty", ""))})
    assert check_spec(http(httpHeaders=None))["liveness_probe"]["handler"][1][
        "http_headers"] == ()


@pytest.mark.parametrize("given,requested", [("healthz", "/healthz"), ("", "/"),
                                             ("/", "/"), ("a/b?c=d", "/a/b?c=d"),
                                             ("/X-Y_Z", "/X-Y_Z")])
def test_a_relative_http_path_is_requested_from_the_root(given, requested):
    assert check_spec(http(path=given))["liveness_probe"]["handler"][1]["path"] == requested


def test_the_timeout_above_the_period_is_accepted_with_a_warning():
    warnings: list = []
    check_spec({"readinessProbe": {"guestAgentPing": {}, "timeoutSeconds": 5,
                                   "periodSeconds": 4}}, warnings=warnings)
    assert warnings == [SpecWarning(
        "spec.readinessProbe.timeoutSeconds",
        "5 is above periodSeconds (4); accepted, as Kubernetes does: a probe still running "
        "when the next is due makes that one wait for the next period (lower "
        "timeoutSeconds or raise periodSeconds to probe every period)")]
    equal: list = []
    check_spec(live({"guestAgentPing": {}, "timeoutSeconds": 4, "periodSeconds": 4}),
               warnings=equal)
    assert equal == []
    # Without a list to collect them, warnings are dropped (the daemon, the hook).
    assert check_spec(live({"guestAgentPing": {}, "timeoutSeconds": 5,
                            "periodSeconds": 4}))["liveness_probe"]["timeout_seconds"] == 5


# -- named ports ------------------------------------------------------------------

PORTS = {"http": (8080, "spec.domain.devices.interfaces[0].ports[0].port"),
         "huge": (70000, "spec.domain.devices.interfaces[1].ports[2].port")}


def test_a_named_port_resolves_through_the_declared_ports():
    checked = check_spec({"readinessProbe": {"httpGet": {"port": "http"}},
                          "livenessProbe": {"tcpSocket": {"port": "http"}}},
                         named_ports=PORTS)
    assert checked["readiness_probe"]["handler"][1]["port"] == 8080
    assert checked["liveness_probe"]["handler"][1]["port"] == 8080


def test_a_declared_port_out_of_range_is_refused_where_it_is_declared():
    assert refusal(live({"tcpSocket": {"port": "huge"}}), named_ports=PORTS) == (
        "spec.domain.devices.interfaces[1].ports[2].port",
        "spec.domain.devices.interfaces[1].ports[2].port: must be between 1 and 65535, "
        "got 70000")


def test_an_undeclared_name_lists_the_first_ten_declared_names_sorted():
    declared = {f"p{i:02}": (1000 + i, "x") for i in range(12, 0, -1)}
    path, message = refusal({"readinessProbe": {"tcpSocket": {"port": "ssh"}}},
                            path="spec.template.spec", named_ports=declared)
    assert path == "spec.template.spec.readinessProbe.tcpSocket.port"
    assert message == (
        f"{path}: names port 'ssh', which is not declared in "
        "spec.template.spec.domain.devices.interfaces[].ports[] (declared: p01, p02, p03, "
        "p04, p05, p06, p07, p08, p09, p10); declare it there ({name: ssh, port: N}) or "
        "write the port number")
    assert refusal(live({"tcpSocket": {"port": "ssh"}}), named_ports={})[1] == (
        "spec.livenessProbe.tcpSocket.port: names port 'ssh', which is not declared in "
        "spec.domain.devices.interfaces[].ports[] (declared: none); declare it there "
        "({name: ssh, port: N}) or write the port number")


@pytest.mark.parametrize("path,vmi", [
    ("spec.template.spec.startupProbe.httpGet.port", "spec.template.spec"),
    ("spec.livenessProbe.tcpSocket.port", "spec"),
    ("x.readinessProbe.tcpSocket.port", "x"),
    ("spec.watchdog.name", "spec"),
    ("a.livenessProbe.b.livenessProbe.port", "a"),  # the first, should a name repeat
])
def test_the_vmi_spec_path_of_a_probe_field(path, vmi):
    assert spec_rules._vmi_spec_path(path) == vmi


# -- header names and values, as the prober sends them ---------------------------

@pytest.mark.parametrize("name,ok", [
    ("X-Token", True), ("a", True), ("0", True), ("Z9", True),
    *((f"a{ch}b", True) for ch in "!#$%&'*+-.^_`|~"),
    ("", False), ("A B", False), ("A:B", False), ("A\tB", False), ("Ä", False),
    ("A(B)", False), ("A\"B", False),
])
def test_header_names_are_rfc7230_tokens(name, ok):
    assert spec_rules.is_http_header_name(name) is ok


@pytest.mark.parametrize("value,ok", [("", True), ("a b\tc", True), ("a\rb", False),
                                      ("a\nb", False), ("a\x00b", False)])
def test_header_values_cannot_end_their_line(value, ok):
    assert spec_rules.is_http_header_value(value) is ok


# -- the error and warning types ------------------------------------------------

def test_spec_error_keeps_the_path_and_the_message_apart():
    error = SpecError("spec.a", "is wrong")
    assert (error.path, error.message, str(error)) == ("spec.a", "is wrong", "spec.a: is wrong")


def test_spec_warnings_compare_and_print_by_path_and_message():
    warning = SpecWarning("spec.a", "odd")
    assert str(warning) == "spec.a: odd"
    assert repr(warning) == "SpecWarning('spec.a', 'odd')"
    assert warning == SpecWarning("spec.a", "odd")
    assert warning != SpecWarning("spec.b", "odd")
    assert warning != SpecWarning("spec.a", "other")
    assert warning != "spec.a: odd"
    assert warning.__eq__("spec.a: odd") is NotImplemented
    assert hash(warning) == hash(SpecWarning("spec.a", "odd"))
    assert hash(warning) == hash(("spec.a", "odd"))
    assert len({warning, SpecWarning("spec.a", "odd"), SpecWarning("spec.b", "odd")}) == 2


@pytest.mark.parametrize("value,name", [
    (None, "null"), (True, "a boolean"), (1, "an integer"), (1.5, "a number"),
    ("x", "a string"), ([], "a list"), ({}, "a mapping"), ((), "tuple"), (b"", "bytes"),
])
def test_type_names_in_messages(value, name):
    assert spec_rules._type_name(value) == name
