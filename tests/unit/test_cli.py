"""The apply/show/remove commands against a private libvirt test-driver connection."""

from __future__ import annotations

import json
import subprocess
import sys

import libvirt
import pytest
from click.testing import CliRunner

from vmhealth.cli import Context, main

SPEC = "livenessProbe: {tcpSocket: {port: 22}}\nwatchdog: {action: poweroff}\n"


@pytest.fixture
def run(conn):
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(main, list(args), obj=Context(uri=None, conn=conn), input=input)

    return invoke


def inactive(conn, name="web1"):
    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                                           libvirt.VIR_DOMAIN_XML_SECURE)


def test_apply_from_stdin_reports_changes(run, conn):
    result = run("apply", "web1", "-f", "-", input=SPEC)
    assert result.exit_code == 0, result.output
    assert "web1: added a i6300esb watchdog with action poweroff" in result.output
    assert "takes effect at its next boot" in result.output
    assert "<watchdog model='i6300esb' action='poweroff'/>" in inactive(conn)


def test_apply_keeps_secrets_in_the_definition(run, conn):
    assert run("apply", "web1", "-f", "-", input=SPEC).exit_code == 0
    assert "s3cret-pass" in inactive(conn)


def test_dry_run_changes_nothing_and_hides_secrets(run, conn):
    before = inactive(conn)
    result = run("apply", "web1", "-f", "-", "--dry-run", input=SPEC)
    assert result.exit_code == 0
    assert "+    <watchdog model=\"i6300esb\" action=\"poweroff\"/>" in result.output
    assert "s3cret-pass" not in result.output
    assert inactive(conn) == before


def test_apply_twice_says_unchanged(run):
    assert run("apply", "web1", "-f", "-", input=SPEC).exit_code == 0
    again = run("apply", "web1", "-f", "-", input=SPEC)
    assert again.exit_code == 0 and again.output == "web1: unchanged\n"


def test_running_domain_gets_live_metadata(run, conn):
    run("apply", "web1", "-f", "-", input=SPEC)
    live = conn.lookupByName("web1").XMLDesc(0)
    assert "https://vmhealth.dev/xmlns/health/1" in live and "tcpSocket" in live


def test_invalid_spec_exits_2_and_writes_nothing(run, conn):
    before = inactive(conn)
    result = run("apply", "web1", "-f", "-",
                 input="readinessProbe:\n  httpGet: {port: 70000}\n")
    assert result.exit_code == 2
    assert "readinessProbe.httpGet.port: must be between 1 and 65535" in result.output
    assert inactive(conn) == before


def test_unknown_domain_exits_1(run):
    result = run("apply", "nosuch", "-f", "-", input=SPEC)
    assert result.exit_code == 1
    assert "domain 'nosuch' not found" in result.output


def test_single_watchdog_libvirt_refusal_is_exit_2(run, conn):
    if conn.getLibVersion() >= 9_001_000:
        pytest.skip("this libvirt allows several watchdogs")
    result = run("apply", "ib700vm", "-f", "-", input=SPEC)
    assert result.exit_code == 2 and "already has a ib700 watchdog" in result.output


def test_show_json_and_yaml(run):
    run("apply", "web1", "-f", "-", input=SPEC)
    as_json = json.loads(run("show", "web1", "-o", "json").output)
    assert as_json["livenessProbe"]["tcpSocket"] == {"port": 22}
    assert as_json["terminationGracePeriodSeconds"] == 30
    assert "onLivenessFailure: restart" in run("show", "web1").output


def test_show_without_spec_exits_1(run):
    result = run("show", "web1")
    assert result.exit_code == 1 and "no vmhealth spec" in result.output


def test_remove_restores_and_is_idempotent(run, conn):
    before = inactive(conn)
    run("apply", "web1", "-f", "-", input=SPEC)
    assert run("remove", "web1").exit_code == 0
    assert inactive(conn) == before
    again = run("remove", "web1")
    assert again.exit_code == 0 and "nothing to remove" in again.output


def test_unreachable_libvirt_exits_1():
    result = CliRunner().invoke(main, ["--connect", "test:///nonexistent/driver.xml",
                                       "show", "web1"])
    assert result.exit_code == 1 and "cannot connect to libvirt" in result.output


def test_help_explains_examples():
    result = CliRunner().invoke(main, ["apply", "--help"])
    assert result.exit_code == 0 and "kubectl get vmi web1 -o yaml" in result.output


def test_connect_after_the_subcommand():
    result = CliRunner().invoke(main, ["show", "web1", "--connect",
                                       "test:///nonexistent/driver.xml"])
    assert result.exit_code == 1
    assert "cannot connect to libvirt at test:///nonexistent/driver.xml" in result.output


NOWHERE = "test:///nonexistent/driver.xml"


@pytest.mark.parametrize("args", [
    ["-c", NOWHERE, "show", "web1"],
    ["show", "web1", "-c", NOWHERE],
    ["-c", "test:///default", "show", "web1", "--connect", NOWHERE],  # the later wins
    ["-c", NOWHERE, "cloudinit", "render", "--domain", "web1"],
    ["cloudinit", "render", "--domain", "web1", "-c", NOWHERE],
    ["cloudinit", "seed", "web1", "-o", "seed.iso", "--connect", NOWHERE],
    ["probes", "pause", "web1", "--connect", NOWHERE],
])
def test_one_connect_option_before_or_after_every_libvirt_command(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert f"cannot connect to libvirt at {NOWHERE}" in result.output


def test_without_connect_the_uri_is_libvirt_default_uri(monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", NOWHERE)
    result = CliRunner().invoke(main, ["show", "web1"])
    assert result.exit_code == 1
    assert f"cannot connect to libvirt at {NOWHERE}" in result.output


def test_every_connect_option_has_the_same_help():
    helps = {" ".join(CliRunner().invoke(main, [*command, "--help"]).output.split())
             .partition("-c, --connect URI")[2].partition(")")[0]
             for command in (["show"], ["apply"], ["remove"], ["probes", "pause"],
                             ["cloudinit", "render"], ["cloudinit", "seed"], [])}
    assert helps == {" libvirt URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system"}


def test_a_message_from_libvirt_is_escaped_for_the_terminal(run):
    result = run("show", "web\x1b]0;owned\x07")
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\\x1b]0;owned\\x07" in result.output


def test_daemon_raises_its_open_file_limit_to_the_hard_limit():
    script = ("import resource\n"
              "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
              "from vmhealth.cli_daemon import raise_open_file_limit\n"
              "raise_open_file_limit()\n"
              "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "True"


# --- what the daemon says reaches the terminal escaped, whatever it says ------------
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\x9b1m"


class HostileDaemon:
    """An API client whose daemon (another version, or a guest's text it did not bound)
    puts terminal escape sequences into everything."""

    def __init__(self, _socket_path: str) -> None:
        self.probe_entry = {"healthy": False, "reason": HOSTILE * 1000, "since": 1.0,
                            "lastResult": {"outcome": "failure", "time": 1.0,
                                           "duration": 0.5, "counted": True,
                                           "message": HOSTILE}}

    def status(self, domain=None):
        entry = {"name": "web" + HOSTILE, "uuid": HOSTILE, "state": HOSTILE,
                 "suppressed": HOSTILE, "ready": False, "live": True,
                 "action": {"action": HOSTILE, "phase": HOSTILE},
                 "probes": {"readiness": self.probe_entry}}
        return entry if domain else {"libvirtConnected": True, "domains": [entry]}

    def events(self, **_options):
        yield {"seq": 1, "time": 1.0, "domain": HOSTILE, "type": HOSTILE, "message": HOSTILE}

    def probe(self, domain, kind):
        return {"domain": domain, "probe": kind, "outcome": HOSTILE, "message": HOSTILE,
                "duration": 0.5, "time": 1.0}


class RefusingDaemon(HostileDaemon):
    def status(self, domain=None):
        from vmhealth.monitor.client import ApiError
        raise ApiError(404, f"domain {HOSTILE!s} is not monitored")


def assert_escaped(output: str) -> None:
    assert all(line.isprintable() for line in output.split("\n")), repr(output[:300])
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in output


@pytest.mark.parametrize("args", [
    ("status",), ("status", "web1"), ("status", "-o", "json"), ("status", "-o", "wide"),
    ("status", "-o", "yaml"), ("status", "web1", "-o", "wide"), ("events",),
    ("events", "-o", "json"), ("events", "-o", "text"), ("events", "--follow"),
    ("probe", "web1", "readiness"),
    ("probe", "web1", "readiness", "-o", "json")])
def test_daemon_output_is_escaped_for_the_terminal(monkeypatch, args):
    from vmhealth import cli_daemon

    monkeypatch.setattr(cli_daemon, "_client", HostileDaemon)
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    output = result.output
    assert all(line.isprintable() for line in output.split("\n")), repr(output[:300])
    assert "pwned" in output and "\x1b" not in output and "\x9b" not in output


@pytest.mark.parametrize("args", [("status", "web1"),
                                  ("wait", "web1", "--for", "ready", "--timeout", "0s")])
def test_daemon_errors_are_escaped_for_the_terminal(monkeypatch, args):
    from vmhealth import cli_daemon

    monkeypatch.setattr(cli_daemon, "_client", RefusingDaemon)
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1
    assert_escaped(result.output)


def test_show_escapes_a_stored_spec(run):
    hostile = json.dumps({"livenessProbe": {"exec": {"command": ["cat", HOSTILE]}}})
    assert run("apply", "web1", "-f", "-", input=hostile).exit_code == 0
    for output in ("yaml", "json"):
        shown = run("show", "web1", "-o", output).output
        assert "pwned" in shown and all(line.isprintable() for line in shown.split("\n"))


def test_probes_pause_and_resume_set_the_spec_and_the_live_metadata(run, conn):
    """KubeVirt's kubevirt.io/pause-guest-agent-probes, at run time."""
    assert run("apply", "web1", "-f", "-",
               input="livenessProbe: {guestAgentPing: {}}\n").exit_code == 0
    result = run("probes", "pause", "web1")
    assert result.exit_code == 0, result.output
    assert "guest-agent ping probes paused" in result.output
    shown = json.loads(run("show", "web1", "-o", "json").output)
    assert shown["guestAgentPingPaused"] is True
    live = conn.lookupByName("web1").XMLDesc(0)
    assert '"guestAgentPingPaused":true' in live.replace(" ", "")
    assert "already paused" in run("probes", "pause", "web1").output
    assert run("probes", "resume", "web1").exit_code == 0
    assert json.loads(run("show", "web1", "-o", "json").output)["guestAgentPingPaused"] is False


def test_probes_pause_without_a_spec_exits_1(run):
    result = run("probes", "pause", "web1")
    assert result.exit_code == 1 and "no vmhealth spec" in result.output
