"""One corpus of guest answers, run through both probe engines: the same verdicts.

The Python handlers (probes/http.py, probes/tcp.py; kubelet's pkg/probe/http/http.go
and pkg/probe/tcp/tcp.go as the reference) decide every probe; the native lane
(vmhealth_fastlane, src/native/fastlane.c) only repeats a settled success - the same
connect, or the same HTTP status read the way the handler reads it - and hands every
other answer back. So the lane must count exactly the answers the handler counts as
that same success, and must report a timeout only where the handler times out too.

Each case is served by tests/unit/hostile_http.py (a subprocess) on /case/<index>,
once to the Python handler and once to a lane repeating the healthy case's recipe:

- Python's verdict: "same" (SUCCESS, and the handler would hand the lane the recipe
  of the settled 200), "timeout" (its timeout message), else "other";
- the lane's: "same" (it counted the attempt silently), "timeout" (TIMEOUT), "other"
  (DIFFERENT: it hands the tick back and the handler decides).

What must hold, per case: the lane says "same" exactly when Python does, and
"timeout" only when Python does. A lane "other" where Python says "timeout" is
allowed: the lane gives up at a status it does not repeat before the body is in, and
the handler then runs that tick itself (and times out).

Like aiohttp, which runs one suite through its C and its Python HTTP parser.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

import pytest
from tests.ci import NO_LANE, require_module
from tests.unit.hostile_http import HostileServer

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome, Recipe
from vmhealth.monitor.metrics import DURATION_BUCKETS
from vmhealth.monitor.native_lane import DIFFERENT, TIMEOUT
from vmhealth.monitor.probes import run_once
from vmhealth.monitor.probes.http import HttpProbeStarter
from vmhealth.monitor.probes.tcp import TcpProbeStarter

fastlane = require_module("vmhealth_fastlane", NO_LANE)

TIMEOUT_SECONDS = 0.6  # each attempt's timeoutSeconds, for both engines
WAIT_SECONDS = 10.0  # how long the lane may take to be seen ending (a bound, not a speed)
BODY_CAP = 10 * 1024  # kubelet reads at most 10 KiB of a body
OK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _length(status: str, body: str, extra: str = "") -> str:
    return f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"


def _chunked(status: str, pieces: list[str], trailer: str = "") -> str:
    chunks = "".join(f"{len(piece):x}\r\n{piece}\r\n" for piece in pieces)
    return f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n{trailer}\r\n"


def _eof(status: str, body: str) -> str:
    return f"HTTP/1.1 {status}\r\n\r\n{body}"


# name -> actions (hostile_http.py's protocol); the first case is the settled answer.
HTTP_CORPUS: dict[str, list] = {
    "200 length": [["send", OK], ["close"]],
    # every status class
    "100 then 200": [["send", "HTTP/1.1 100 Continue\r\n\r\n" + OK], ["close"]],
    "103 then 200": [["send", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK],
                     ["close"]],
    "101 switching": [["send", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                               "Connection: upgrade\r\n\r\n"], ["close"]],
    "201 created": [["send", _length("201 Created", "ok")], ["close"]],
    "204 no content": [["send", "HTTP/1.1 204 No Content\r\n\r\n"], ["close"]],
    "299": [["send", _length("299 X", "")], ["close"]],
    "304 no location": [["send", "HTTP/1.1 304 Not Modified\r\n\r\n"], ["close"]],
    "399 no location": [["send", _length("399 X", "")], ["close"]],
    "400": [["send", _length("400 Bad Request", "no")], ["close"]],
    "404": [["send", _length("404 Not Found", "no")], ["close"]],
    "500": [["send", _length("500 Internal Server Error", "boom")], ["close"]],
    "503": [["send", _length("503 Service Unavailable", "")], ["close"]],
    "599": [["send", _length("599 X", "")], ["close"]],
    "999": [["send", _length("999 X", "")], ["close"]],
    # redirects: followed by the handler, never repeated by the lane
    "302 to the same host": [["send", _length("302 Found", "", "Location: /case/0\r\n")],
                             ["close"]],
    "301 to another host": [["send", _length("301 Moved", "",
                                             "Location: http://elsewhere.invalid/\r\n")],
                            ["close"]],
    # bodies: by length, chunked, to the end of the stream, over the 10 KiB cap
    "200 length 10 KiB": [["send", _length("200 OK", "b" * BODY_CAP)], ["close"]],
    "200 length 40 KiB": [["send", _length("200 OK", "b" * 4 * BODY_CAP)], ["hang", 3]],
    "200 chunked": [["send", _chunked("200 OK", ["o", "k"])], ["close"]],
    "200 chunked trailer": [["send", _chunked("200 OK", ["ok"], "X-T: t\r\n")], ["close"]],
    "200 chunked 1-byte 12 KiB": [["send", _chunked("200 OK", ["b"] * (12 * 1024))],
                                  ["hang", 3]],
    "200 chunked extension": [["send", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
                                       "\r\n\r\n2;a=b\r\nok\r\n0\r\n\r\n"], ["close"]],
    "200 eof body": [["send", _eof("200 OK", "ok")], ["close"]],
    "200 eof empty": [["send", _eof("200 OK", "")], ["close"]],
    "200 eof 12 KiB, open": [["send", _eof("200 OK", "b" * 12 * 1024)], ["hang", 3]],
    "500 eof body": [["send", _eof("500 X", "no")], ["close"]],
    "200 dripped": [["drip", OK, 3, 0.01], ["close"]],
    "200 then reset": [["send", OK], ["reset"]],
    "200 then garbage": [["send", OK + "HTTP/1.1 500 X\r\n\r\n"], ["close"]],
    # truncations
    "nothing, closed": [["close"]],
    "status line cut": [["send", "HTTP/1.1 200"], ["close"]],
    "head cut": [["send", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"], ["close"]],
    "length body cut": [["send", _length("200 OK", "okay")[:-2]], ["close"]],
    "chunked body cut": [["send", _chunked("200 OK", ["ok"])[:-7]], ["close"]],
    "chunk size cut": [["send", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2"],
                       ["close"]],
    # resets
    "reset at once": [["reset"]],
    "reset in the head": [["send", "HTTP/1.1 200 OK\r\nContent-"], ["reset"]],
    "reset in the body": [["send", _length("200 OK", "okay")[:-2]], ["reset"]],
    # timeouts
    "silent": [["hang", 3]],
    "head, then silent": [["send", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"], ["hang", 3]],
    "body short, then silent": [["send", _length("200 OK", "okay")[:-2]], ["hang", 3]],
    "500, body short, then silent": [["send", _length("500 X", "okay")[:-2]], ["hang", 3]],
    "slow drip past the timeout": [["drip", OK, 1, 0.2], ["close"]],
    # not HTTP
    "garbage": [["send", "this is not HTTP\r\n\r\n"], ["close"]],
    "HTTP/2 preface": [["send", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], ["close"]],
    "bad content length": [["send", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok"],
                           ["close"]],
    "two content lengths": [["send", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                     "Content-Length: 3\r\n\r\nok"], ["close"]],
    "head over 64 KiB": [["send", "HTTP/1.1 200 OK\r\nX-Big: " + "v" * 70 * 1024
                                  + "\r\nContent-Length: 0\r\n\r\n"], ["close"]],
}


@dataclass
class Verdicts:
    python: dict[str, str] = field(default_factory=dict)
    lane: dict[str, str] = field(default_factory=dict)

    def mismatches(self) -> list[str]:
        wrong = []
        for name, python in self.python.items():
            lane = self.lane[name]
            if (lane == "same") != (python == "same") or (lane == "timeout"
                                                          and python != "timeout"):
                wrong.append(f"{name}: python {python}, lane {lane}")
        return wrong


class FakeAccess:
    """GuestAccess of a guest at 127.0.0.1 (no libvirt, no agent)."""

    name = "parity"

    async def addresses(self) -> list[str]:
        return ["127.0.0.1"]

    def cached_addresses(self) -> list[str]:
        return ["127.0.0.1"]

    async def agent_command(self, command: dict, timeout: float) -> object:
        raise AssertionError("no agent in these tests")

    def suppression_reason(self) -> None:
        return None


def _probe(handler) -> spec.Probe:
    return spec.Probe(handler=handler, timeout_seconds=TIMEOUT_SECONDS)  # type: ignore[arg-type]


def python_verdict(starter, settled: Recipe | None) -> str:
    result = asyncio.run(run_once(starter, FakeAccess()))
    if result.message == starter.timeout_message():
        return "timeout"
    repeatable = starter.repeatable
    if result.outcome is Outcome.SUCCESS and repeatable is not None and (
            settled is None or repeatable.status == settled.status):
        return "same"
    return "other"


def lane_verdict(engine, host: str, port: int, request: bytes | None, status: int) -> str:
    now = time.monotonic()
    lane = engine.offload(host, port, request, status, TIMEOUT_SECONDS, 3600.0, now,
                          float("inf"))
    deadline = now + WAIT_SECONDS
    while time.monotonic() < deadline:
        if any(counts[0] for _lane, counts in engine.fold(lane)):
            engine.recall(lane)
            return "same"
        for ended, reason, *_rest in engine.take_reports():
            assert ended == lane, "a report of another lane"
            assert reason in (DIFFERENT, TIMEOUT), reason
            return "timeout" if reason == TIMEOUT else "other"
        time.sleep(0.005)
    engine.recall(lane)
    raise AssertionError(f"the lane neither counted nor handed back in {WAIT_SECONDS} s")


@pytest.fixture
def engine():
    lane_engine = fastlane.Engine(DURATION_BUCKETS)
    yield lane_engine
    lane_engine.close()


def test_http_corpus_gets_the_same_verdicts_from_both_engines(engine):
    names = list(HTTP_CORPUS)
    verdicts = Verdicts()
    with HostileServer([HTTP_CORPUS[name] for name in names]) as server:
        starters = [HttpProbeStarter(_probe(spec.HttpGet(port=server.port,
                                                         path=f"/case/{index}")))
                    for index in range(len(names))]
        verdicts.python[names[0]] = python_verdict(starters[0], None)
        settled = starters[0].repeatable
        assert verdicts.python[names[0]] == "same" and settled is not None
        for index, name in enumerate(names):
            if index:
                verdicts.python[name] = python_verdict(starters[index], settled)
            request = starters[index].request("http", settled.host, server.port,
                                              f"/case/{index}")[0]
            verdicts.lane[name] = lane_verdict(engine, settled.host, server.port, request,
                                               settled.status)
    assert not verdicts.mismatches(), "\n".join(verdicts.mismatches())
    # The corpus reaches every verdict of both engines, so the comparison means something.
    assert set(verdicts.python.values()) == set(verdicts.lane.values()) \
        == {"same", "other", "timeout"}, verdicts


# -- tcpSocket ----------------------------------------------------------------------


def _listener(backlog: int = 16) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _tcp_verdicts(engine, port: int) -> tuple[str, str]:
    starter = TcpProbeStarter(_probe(spec.TcpSocket(port=port)))
    return (python_verdict(starter, None),
            lane_verdict(engine, "127.0.0.1", port, None, 0))


def test_tcp_answers_get_the_same_verdicts_from_both_engines(engine):
    verdicts = Verdicts()
    listening = _listener()
    try:
        # Connected, never accepted or read: a success for kubelet's TCP probe.
        verdicts.python["listening"], verdicts.lane["listening"] = \
            _tcp_verdicts(engine, listening.getsockname()[1])
    finally:
        listening.close()
    resetting = HostileServer([])  # any connection without a request line: a reset
    try:
        verdicts.python["accepted, then reset"], verdicts.lane["accepted, then reset"] = \
            _tcp_verdicts(engine, resetting.port)
    finally:
        resetting.close()
    verdicts.python["refused"], verdicts.lane["refused"] = \
        _tcp_verdicts(engine, _closed_port())
    full = _full_listener()
    if full is not None:
        try:
            verdicts.python["backlog full"], verdicts.lane["backlog full"] = \
                _tcp_verdicts(engine, full[0].getsockname()[1])
        finally:
            for sock in full:
                sock.close()
    assert not verdicts.mismatches(), "\n".join(verdicts.mismatches())
    assert verdicts.python["listening"] == "same" and verdicts.python["refused"] == "other"


def _full_listener() -> list[socket.socket] | None:
    """A listener whose accept queue is full, so that a new SYN is dropped and a
    connect times out (Linux: backlog 0 holds one connection); None if this kernel
    answers anyway."""
    listener = _listener(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(listener.getsockname())
    except (TimeoutError, socket.timeout):
        probe.close()
        return [listener, *fillers]
    except OSError:
        pass
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    probe.close()
    for sock in [listener, *fillers]:
        sock.close()
    return None
