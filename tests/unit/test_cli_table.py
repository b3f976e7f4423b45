"""`vmhealth status` and `vmhealth events` as tables: golden files with a fixed clock,
exit codes, --watch, colour, and text from the daemon that tries to break the layout.

The daemon is a fake API client (the daemon's JSON, as monitor/domain_monitor.py's
`to_dict` and status_view.py's `status()` build it); the clock and the wait of --watch are
replaced, so AGE is deterministic and a watch runs without sleeping.
VMHEALTH_REGEN_GOLDEN=1 rewrites tests/data/cli/*.txt (never under CI=true).
"""

from __future__ import annotations

import copy
import datetime
import io
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tests.golden import check_golden

from vmhealth import cli_daemon, status_table
from vmhealth.cli import main
from vmhealth.monitor.client import ApiError, ApiUnavailable

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "cli"
NOW = 1_796_371_200.0  # 2026-12-04 08:00:00 UTC
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r\n\x9b1m\u202e"


def probe(healthy, outcome, *, reason="", ago=3.0, duration=0.004, counted=True,
          message="ok"):
    return {"healthy": healthy, "reason": reason, "since": NOW - 600, "nativeLane": False,
            "lastResult": {"outcome": outcome, "message": message, "duration": duration,
                           "time": NOW - ago, "counted": counted}}


def domain(name, *, state="running", ready=True, live=True, age=3600.0, probes=None,
           **extra):
    return {"name": name, "uuid": f"uuid-{name}", "state": state, "suppressed": None,
            "ready": ready, "notReadyReason": None, "live": live, "adoptedAt": NOW - age,
            "onLivenessFailure": "restart", "probes": probes or {}, **extra}


def event(seq, ago, name, type_, message, **fields):
    out = {"seq": seq, "time": NOW - ago, "domain": name, "type": type_, "message": message}
    return {**out, "fields": fields} if fields else out


DOMAINS = [
    domain("db1", age=3 * 86400 + 4 * 3600,
           probes={"readiness": probe(True, "success", reason="probe succeeded"),
                   "liveness": probe(True, "success", reason="probe succeeded", ago=1)}),
    domain("web1", ready=False, age=340,
           notReadyReason="readiness: HTTP probe failed with statuscode: 503",
           probes={"startup": probe(True, "success", reason="probe succeeded", ago=330),
                   "readiness": probe(False, "failure", ago=2, duration=0.012,
                                      reason="HTTP probe failed with statuscode: 503"),
                   "liveness": probe(True, "error", ago=1, counted=False,
                                     reason="probe succeeded")}),
    domain("web2", state="paused", ready=False, age=7 * 3600 + 120,
           suppressed="paused by the user", notReadyReason="domain paused by the user",
           probes={"liveness": probe(True, "success", ago=90, reason="probe succeeded")}),
    domain("mig", age=200, suppressed="migrating",
           probes={"liveness": probe(True, "success", ago=2, reason="probe succeeded")}),
    domain("api", ready=False, live=False, age=95,
           notReadyReason="liveness action restart in progress (backing off)",
           action={"action": "restart", "phase": "backing off", "since": NOW - 5,
                   "resumeAt": NOW + 40},
           probes={"liveness": probe(False, "failure", reason="dial tcp: connection refused",
                                     message="connection refused"),
                   "readiness": {"healthy": None, "reason": "", "since": NOW - 95,
                                 "nativeLane": False}}),
]
EVENTS = [
    event(1, 4000, "", "LibvirtReconnected", "reconnected to libvirt"),
    event(2, 900, "api", "LivenessAction", "liveness failed (dial tcp: connection "
          "refused): restart done", action="restart"),
    event(3, 700, "web1", "Watchdog", "watchdog fired; action reset", action="reset"),
    event(4, 600, "api", "LivenessAction", "liveness failed: poweroff done",
          action="poweroff"),
    event(5, 340, "web1", "Adopted", "monitoring startup, readiness, liveness (started)",
          reason="started"),
    event(6, 40, "web1", "NotReady", "readiness: HTTP probe failed with statuscode: 503",
          probe="readiness"),
    event(7, 6, "api", "LivenessFailed", "liveness failed: connection refused; action "
          "restart", probe="liveness", action="restart"),
    event(8, 5, "api", "RestartBackOff", "restart back-off: starting again in 40 s",
          delaySeconds=40, restarts=1),
]


class FakeDaemon:
    """The API client, answering from `domains` and `events`; a test may change both
    between two requests of a watch, or make the next requests fail."""

    def __init__(self, domains=None, events=None) -> None:
        self.domains = copy.deepcopy(DOMAINS if domains is None else domains)
        self.events_list = copy.deepcopy(EVENTS if events is None else events)
        self.connected = True
        self.failures: list[Exception] = []
        self.status_calls = 0

    def status(self, name=None):
        self.status_calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if name is None:
            return {"libvirtConnected": self.connected, "domains": self.domains,
                    "actionsInFlight": {}}
        for entry in self.domains:
            if name in (entry["name"], entry["uuid"]):
                return entry
        raise ApiError(404, f"domain {name} is not monitored")

    def events(self, *, follow=False, domain=None, since=0):
        return iter([e for e in self.events_list if domain is None or e["domain"] == domain])


@pytest.fixture
def daemon(monkeypatch):
    fake = FakeDaemon()
    monkeypatch.setattr(cli_daemon, "_client", lambda _socket: fake)
    monkeypatch.setattr(cli_daemon, "_now", lambda: NOW)
    monkeypatch.setattr(cli_daemon, "TIME_ZONE", datetime.timezone.utc)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return fake


def run(*args):
    return CliRunner().invoke(main, list(args))


# --------------------------------------------------------------------- golden tables
@pytest.mark.parametrize(("golden", "args"), [
    ("status.txt", ("status",)),
    ("status-wide.txt", ("status", "-o", "wide")),
    ("status-one.txt", ("status", "db1")),
    ("events.txt", ("events",)),
    ("events-domain.txt", ("events", "--domain", "api")),
    ("events-text.txt", ("events", "-o", "text")),
    ("events-follow.txt", ("events", "--follow")),
])
def test_tables_match_golden(daemon, golden, args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    check_golden(GOLDEN / golden, result.output)


def test_hostile_text_is_escaped_and_keeps_the_columns(daemon):
    """Escape sequences, a line break, a right-to-left override and wide characters in
    what the daemon says: every line printable, every column where the header says."""
    daemon.domains = [
        domain("web" + HOSTILE, ready=False, state=HOSTILE,
               probes={"readiness": probe(False, HOSTILE, reason=HOSTILE * 50)}),
        domain("数据库", probes={"liveness": probe(True, "success")}),
        domain("ok", probes={})]
    daemon.events_list = [event(1, 10, "web" + HOSTILE, HOSTILE, HOSTILE),
                          event(2, 5, "数据库", "Ready", "readiness: probe succeeded")]
    for args, golden in ((("status", "-o", "wide"), "status-hostile.txt"),
                         (("events",), "events-hostile.txt")):
        output = run(*args).output
        assert all(line.isprintable() for line in output.splitlines()), repr(output)
        assert "\\x1b]0;pwned\\x07" in output and "\\u202e" in output
        assert_columns_aligned(output)
        check_golden(GOLDEN / golden, output)


def assert_columns_aligned(output: str) -> None:
    """Every column starts, on every row, at the display column of its header."""
    lines = output.splitlines()
    titles = lines[0].split()
    starts = [lines[0].index(title) for title in titles]
    for line in lines[1:]:
        for start in starts[1:]:
            before = status_table.display_width(_prefix_at(line, start))
            assert before == start, (line, start)
            # a column starts after the separator's blank
            assert _prefix_at(line, start).endswith(" "), (line, start)


def _prefix_at(line: str, column: int) -> str:
    """The characters of `line` that take its first `column` display columns."""
    out, width = [], 0
    for ch in line:
        if width >= column:
            break
        out.append(ch)
        width += status_table.display_width(ch)
    return "".join(out)


# --------------------------------------------------------------------- exit codes
@pytest.mark.parametrize(("args", "code"), [
    (("status", "db1"), 0),
    (("status", "uuid-db1"), 0),
    (("status", "web1"), 1),  # not ready
    (("status", "api"), 1),  # not live
    (("status", "web1", "-o", "json"), 1),
    (("status", "web1", "-o", "wide"), 1),
    (("status", "db1", "-o", "yaml"), 0),
    (("status",), 0),  # all domains: 0 whatever their health
    (("status", "nosuch"), 1),
])
def test_exit_codes_stay_as_they_were(daemon, args, code):
    result = run(*args)
    assert result.exit_code == code, result.output


def test_unreachable_daemon_exits_1(daemon):
    daemon.failures = [ApiUnavailable("cannot reach the vmhealth daemon at /x")]
    result = run("status")
    assert result.exit_code == 1
    assert "cannot reach the vmhealth daemon" in result.output


def test_one_domain_by_uuid_counts_its_events_by_name(daemon):
    output = run("status", "uuid-api").output
    assert output.splitlines()[1].split()[:6] == ["api", "running", "no", "no", "1",
                                                   "(15m"]


def test_machine_output_is_the_daemons_answer(daemon):
    import json

    import yaml

    assert json.loads(run("status", "-o", "json").output)["domains"] == DOMAINS
    assert yaml.safe_load(run("status", "-o", "yaml").output)["domains"] == DOMAINS
    lines = run("events", "-o", "json").output.splitlines()
    assert [json.loads(line) for line in lines] == EVENTS


def test_no_domain_and_no_libvirt_are_said_on_stderr(daemon):
    daemon.domains, daemon.connected = [], False
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click 8.2 and later keep stderr apart by themselves
        runner = CliRunner()
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ("warning: the daemon is not connected to libvirt\n"
                             "no domain is monitored\n")


# --------------------------------------------------------------------- --watch
class Script:
    """The wait between two requests of a watch: runs the next step (a change of the
    daemon's answer, the clock moving on) and ends the watch like Ctrl-C after the
    last one."""

    def __init__(self, monkeypatch, steps) -> None:
        self.steps = list(steps)
        self.clock = NOW
        self.waits: list[float] = []
        monkeypatch.setattr(cli_daemon, "_sleep", self.sleep)
        monkeypatch.setattr(cli_daemon, "_now", lambda: self.clock)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if not self.steps:
            raise KeyboardInterrupt
        self.clock += seconds
        self.steps.pop(0)()


def test_watch_prints_again_only_on_change(daemon, monkeypatch):
    web1 = daemon.domains[1]

    def becomes_ready():
        web1["ready"] = True
        web1["probes"]["readiness"] = probe(True, "success", reason="probe succeeded")
        daemon.events_list.append(event(9, 0, "web1", "Ready", "readiness: succeeded"))

    def daemon_restarts():
        daemon.failures = [ApiUnavailable("cannot reach the vmhealth daemon at /x")] * 2

    script = Script(monkeypatch, [
        lambda: None,  # only the clock moved: AGE and the results' ages, no news
        lambda: None,
        becomes_ready,
        daemon_restarts,  # said once, not once per request
        lambda: None,
        lambda: None,  # answering again: the table again
    ])
    result = run("status", "--watch", "--interval", "5s")
    assert result.exit_code == 0, result.output
    assert script.waits == [5.0] * 7  # every wait is the interval; Ctrl-C ends it
    assert daemon.status_calls == 7
    assert result.output.count("NAME ") == 3
    assert result.output.count("error: cannot reach") == 1
    check_golden(GOLDEN / "status-watch.txt", result.output)


def test_watch_of_one_domain_exits_with_its_last_health(daemon, monkeypatch):
    web1 = daemon.domains[1]

    def becomes_ready():
        web1["ready"] = True

    Script(monkeypatch, [becomes_ready])
    result = run("status", "web1", "-w")
    assert result.exit_code == 0, result.output
    assert result.output.count("NAME ") == 2

    Script(monkeypatch, [lambda: daemon.failures.append(ApiError(404, "not monitored"))])
    result = run("status", "db1", "-w")
    assert result.exit_code == 1  # the last answer was no answer: not known healthy
    assert "error: not monitored" in result.output


def test_watch_in_json_prints_each_change_once(daemon, monkeypatch):
    import json

    def flips():
        daemon.domains[0]["ready"] = False

    Script(monkeypatch, [lambda: None, flips, lambda: None])
    output = run("status", "-o", "json", "-w").output
    documents = [json.loads(part) for part in output.replace("}\n{", "}\x00{").split("\x00")]
    assert [doc["domains"][0]["ready"] for doc in documents] == [True, False]


@pytest.mark.parametrize("interval", ["0.1s", "0", "soon"])
def test_watch_interval_is_checked(daemon, interval):
    result = run("status", "-w", "--interval", interval)
    assert result.exit_code == 2
    assert "--interval" in result.output or "duration" in result.output


# --------------------------------------------------------------------- colour
def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert cli_daemon._colour() is False
    monkeypatch.setattr("sys.stdout", Terminal())
    assert cli_daemon._colour() is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli_daemon._colour() is False
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: an empty value is not set
    assert cli_daemon._colour() is True


def test_colour_wraps_cells_after_padding():
    table = status_table.status_table(DOMAINS, EVENTS, NOW)
    plain = status_table.render(table)
    coloured = status_table.render(table, colour=True)
    assert coloured != plain
    assert [click.unstyle(line) for line in coloured] == plain
    assert "\x1b[32myes\x1b[0m   " in coloured[1]  # ready, green, then the padding
    assert "\x1b[31mno\x1b[0m" in coloured[2]


def test_no_colour_when_printed_to_a_pipe(daemon):
    assert "\x1b[" not in run("status").output
    assert "\x1b[" not in run("events").output


# --------------------------------------------------------------------- pieces
@pytest.mark.parametrize(("seconds", "shown"), [
    (-5, "0s"), (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (330, "5m30s"),
    (599, "9m59s"), (600, "10m"), (3 * 3600 - 1, "179m"), (3 * 3600, "3h"),
    (5 * 3600 + 1800, "5h30m"), (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"),
    (3 * 86400 + 4 * 3600, "3d4h"), (8 * 86400, "8d"), (729 * 86400, "729d"),
    (730 * 86400, "2y"), (3 * 365 * 86400 + 30 * 86400, "3y30d"),
])
def test_ages_read_like_kubectl(seconds, shown):
    assert status_table.human_duration(seconds) == shown


def test_restarts_count_restarts_resets_and_watchdog_resets_only():
    events = [event(1, 50, "a", "LivenessAction", "", action="restart"),
              event(2, 40, "a", "LivenessAction", "", action="poweroff"),
              event(3, 30, "a", "Watchdog", "", action="reset"),
              event(4, 20, "a", "Watchdog", "", action="poweroff"),
              event(5, 15, "a", "LivenessActionFailed", "", action="restart"),
              event(6, 10, "a", "LivenessAction", "", action="reset"),
              event(7, 5, "a", "NotReady", "", probe="readiness"),
              {"seq": 8, "time": NOW, "domain": "a", "type": "LivenessAction",
               "fields": "not a mapping"}]
    assert status_table.restarts(events) == (3, NOW - 10)
    assert status_table.restarts([]) == (0, None)


@pytest.mark.parametrize("value", [None, "", "yesterday", True, -1, 0, float("inf"),
                                   float("nan")])
def test_a_time_that_is_not_one_shows_as_a_dash(value):
    assert status_table.when(value) == "-"
    row = status_table.status_table([{**domain("x"), "adoptedAt": value}], [], NOW).rows[0]
    assert row[5].text == "-"


def test_a_time_past_the_calendar_shows_as_a_dash():
    assert status_table.when(1e300) == "-"


def test_cut_counts_display_columns():
    assert status_table.cut("abcdef", 6) == "abcdef"
    assert status_table.cut("abcdefg", 6) == "abc..."
    assert status_table.cut("数据库数据库", 7) == "数据..."
    assert status_table.display_width("数据库") == 6
    assert status_table.display_width("e\u0301") == 1


def test_watch_over_the_real_socket(tmp_path, monkeypatch):
    """The real API client against the daemon's API server: the table, the events it
    reads restarts from, and a change between two requests."""
    from tests.unit.api_support import Server

    server = Server(str(tmp_path / "api.sock"))
    try:
        server.record("web1", "LivenessAction", "restart done", action="restart")
        monkeypatch.setattr(cli_daemon, "TIME_ZONE", datetime.timezone.utc)

        def web1_not_live():
            server.source.domains["web1"] = {**server.source.domains["web1"],
                                             "live": False, "ready": False}

        Script(monkeypatch, [lambda: None, web1_not_live])
        result = run("status", "web1", "-w", "--socket", server.api.socket_path)
    finally:
        server.close()
    assert result.exit_code == 1, result.output  # its last answer: not live
    rows = [line.split()[:5] for line in result.output.splitlines() if line.startswith("web1")]
    assert rows == [["web1", "running", "yes", "yes", "1"], ["web1", "running", "no", "no", "1"]]
