"""`vmhealth check DOMAIN --liveness`: the exit code a cluster monitor acts on, for
every state the daemon reports, against a real HTTP server on a unix socket."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmhealth.cli import main
from vmhealth.cli_check import liveness_verdict

ALIVE = {"healthy": True, "reason": "alive: no failure yet", "since": 1.0}
FAILED = {"healthy": False, "reason": "liveness failed: 3 consecutive failures; last: "
                                      "connection refused", "since": 2.0}
NOT_READY = {"healthy": False, "reason": "not ready: HTTP probe failed", "since": 1.0}


def entry(probes: dict, suppressed: str | None = None, **extra) -> dict:
    return {"name": "web1", "uuid": "u-1", "state": "running", "suppressed": suppressed,
            "ready": False, "live": True, "probes": probes, **extra}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeDaemon:
    """Answers GET /status/<domain> from `answers` (status code, body); counts requests."""

    def __init__(self, path: Path) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append(self.path)
                code, body = outer.answers.get(self.path, (404, b'{"error": "not monitored"}'))
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = _Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def answer(self, domain: str, data, code: int = 200) -> None:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.answers[f"/status/{domain}"] = (code, body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(tmp_path):
    daemon = FakeDaemon(tmp_path / "api.sock")
    yield daemon
    daemon.close()


def check(api_or_path, *args, env=None):
    path = api_or_path.server.server_address if isinstance(api_or_path, FakeDaemon) \
        else str(api_or_path)
    runner = CliRunner(mix_stderr=False)
    return runner.invoke(main, ["check", *args, "--socket", path], env=env)


@pytest.mark.parametrize("probes, suppressed, code, words", [
    ({"liveness": ALIVE}, None, 0, "liveness ok: alive"),
    ({"liveness": FAILED}, None, 1, "liveness FAILED: liveness failed: 3 consecutive"),
    # readiness never fails it
    ({"liveness": ALIVE, "readiness": NOT_READY}, None, 0, "liveness ok"),
    ({"readiness": NOT_READY}, None, 0, "undecided: no liveness probe"),
    # startup still running (liveness not run yet), and a failed startup
    ({"startup": {"healthy": None, "reason": "unknown: not probed yet"}, "liveness": ALIVE},
     None, 0, "undecided: startup probe running"),
    ({"startup": {"healthy": False, "reason": "startup failed: 30 consecutive failures"},
      "liveness": ALIVE}, None, 1, "startup failed"),
    ({"startup": {"healthy": True, "reason": "started"}, "liveness": FAILED}, None, 1,
     "liveness FAILED"),
    # suppressed states: the daemon counts no failure, so neither does the monitor
    ({"liveness": FAILED}, "paused", 0, "undecided: domain paused"),
    ({"liveness": FAILED}, "migrating out", 0, "undecided: domain migrating out"),
])
def test_exit_code_per_state(api, probes, suppressed, code, words):
    api.answer("web1", entry(probes, suppressed))
    result = check(api, "web1", "--liveness")
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert words in result.stdout
    assert api.requests == ["/status/web1"]  # one request, nothing else


def test_report_mode_failure_is_a_failure(api):
    api.answer("web1", entry({"liveness": FAILED}, onLivenessFailure="report", live=False))
    assert check(api, "web1", "--liveness").exit_code == 1


def test_not_monitored_yet_is_undecided(api):
    result = check(api, "web1", "--liveness")
    assert result.exit_code == 0
    assert "not monitored" in result.stdout


@pytest.mark.parametrize("policy, code", [(None, 0), ("ok", 0), ("fail", 1)])
def test_daemon_unreachable(tmp_path, policy, code):
    args = ["web1", "--liveness"] + (["--if-unreachable", policy] if policy else [])
    result = check(tmp_path / "no-daemon.sock", *args)
    assert result.exit_code == code
    assert "warning: liveness unknown, cannot reach the vmhealth daemon" in result.stderr


def test_a_daemon_that_never_answers_is_unreachable_within_the_timeout(tmp_path):
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # accepts (the backlog) and never answers
    try:
        result = check(path, "web1", "--liveness", "--timeout", "0.3")
    finally:
        listener.close()
    assert result.exit_code == 0
    assert "liveness unknown" in result.stderr


@pytest.mark.parametrize("code, body", [(500, b'{"error": "boom"}'), (200, b"<html>"),
                                        (200, b"[1, 2]")])
def test_a_broken_answer_counts_as_unreachable(api, code, body):
    api.answer("web1", body, code)
    assert check(api, "web1", "--liveness").exit_code == 0
    assert check(api, "web1", "--liveness", "--if-unreachable", "fail").exit_code == 1


def test_guest_text_is_bounded_and_escaped(api):
    hostile = {"healthy": False, "reason": "\x1b]0;pwned\x07" + "x" * 10_000}
    api.answer("web1", entry({"liveness": hostile}))
    result = check(api, "web1", "--liveness")
    assert result.exit_code == 1
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert len(result.stdout) < 500


def test_domain_from_virtualdomain_environment(api, tmp_path):
    config = tmp_path / "web1.xml"
    config.write_text("<domain type='qemu'><name>web1</name></domain>")
    api.answer("web1", entry({"liveness": FAILED}))
    result = check(api, "--liveness", env={"OCF_RESKEY_config": str(config)})
    assert result.exit_code == 1
    assert api.requests == ["/status/web1"]


@pytest.mark.parametrize("content", [None, "<domain/>", "<domain><name>x", "<!DOCTYPE d>"
                                     "<domain><name>x</name></domain>"])
def test_unusable_virtualdomain_environment_is_bad_usage(api, tmp_path, content):
    config = tmp_path / "web1.xml"
    if content is not None:
        config.write_text(content)
    result = check(api, "--liveness", env={"OCF_RESKEY_config": str(config)})
    assert result.exit_code == 2
    assert "OCF_RESKEY_config" in result.stderr
    assert api.requests == []


def test_without_a_domain_or_the_question_it_is_bad_usage(api):
    result = check(api, "--liveness", env={"OCF_RESKEY_config": ""})
    assert result.exit_code == 2 and "name the domain" in result.stderr
    result = check(api, "web1")
    assert result.exit_code == 2 and "--liveness" in result.stderr


def test_verdict_reads_nothing_but_the_probes_and_suppression():
    assert liveness_verdict({}) == (False, "undecided: no liveness probe")
    assert liveness_verdict({"probes": {"liveness": FAILED}})[0] is True


@pytest.mark.parametrize("probes", [[1, 2], "x", None, {"liveness": [FAILED]},
                                    {"liveness": "failed"}, {"startup": 3, "liveness": ALIVE}])
def test_a_status_of_another_shape_never_fails_the_monitor(api, probes):
    api.answer("web1", entry(probes))
    result = check(api, "web1", "--liveness")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)


def test_python_m_cli_check_is_the_same_command(api):
    """`python3 -m vmhealth.cli_check`: the cheaper form for monitors (docs/cluster.md)."""
    api.answer("web1", entry({"liveness": FAILED}))
    socket_path = api.server.server_address
    command = [sys.executable, "-I", "-m", "vmhealth.cli_check"]
    failed = subprocess.run([*command, "web1", "--liveness", "--socket", socket_path],
                            capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 1 and "liveness FAILED" in failed.stdout
    unreachable = subprocess.run([*command, "web1", "--liveness", "--socket",
                                  socket_path + ".gone"],
                                 capture_output=True, text=True, timeout=60, check=False)
    assert unreachable.returncode == 0 and "liveness unknown" in unreachable.stderr
    usage = subprocess.run([*command, "web1"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert usage.returncode == 2 and "--liveness" in usage.stderr
