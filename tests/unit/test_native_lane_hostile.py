"""The native lane against guests that answer to hurt.

What must hold, whatever a guest sends: the lane reads a bounded number of bytes
(the head, and what follows it, are capped; past a cap the probe goes back to
Python, whose handler has the same limits and says what failed); an answer bigger than one turn's
read budget is still read to its end (the socket is served again on the next turn,
though the edge-triggered epoll will not say so again); an answer that trickles past
the timeout is a timeout; a second Engine.__init__ changes nothing.
"""

from __future__ import annotations

import time

import pytest
from tests.ci import NO_LANE, require_module
from tests.unit.hostile_http import HostileServer

from vmhealth.monitor import native_lane
from vmhealth.monitor.metrics import DURATION_BUCKETS

fastlane = require_module("vmhealth_fastlane", NO_LANE)

WAIT = 10.0  # seconds any expectation may take on a loaded machine
TIMEOUT = 5.0  # the lanes' timeoutSeconds: long, so a timeout is never the verdict by luck


def request(case: int) -> bytes:
    return f"GET /case/{case} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def head_of(size: int, content_length: int = 0) -> str:
    """A 200 head of exactly `size` bytes, status line to blank line (one filler header)."""
    start = f"HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\n"
    filler = size - len(start) - 2
    text = start + "X: " + "v" * (filler - 5) + "\r\n\r\n"
    assert filler >= 6 and len(text) == size
    return text


def test_the_lane_reads_no_more_than_the_python_handler():
    # Otherwise the lane could count as a success what the handler fails.
    http = require_module("vmhealth.monitor.probes.http",
                          "the httpGet handler needs httptools (the host extra)")
    assert fastlane.HEAD_CAP_BYTES <= http.MAX_HEAD_BYTES
    assert fastlane.AFTER_HEAD_CAP_BYTES <= http.MAX_AFTER_HEAD_BYTES
    assert fastlane.BODY_CAP_BYTES == http.OUTPUT_CAP_BYTES


@pytest.fixture
def engine():
    lane_engine = fastlane.Engine(DURATION_BUCKETS)
    yield lane_engine
    lane_engine.close()


def offload(engine, port: int, case: int, *, timeout: float = TIMEOUT) -> int:
    now = time.monotonic()
    return engine.offload("127.0.0.1", port, request(case), 200, timeout, 60.0, now,
                          float("inf"))


def outcome(engine, lane: int) -> tuple[str, tuple]:
    """('counted', counts) or ('handed back', report), waiting with a bound."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for report in engine.take_reports():
            assert report[0] == lane, report
            return "handed back", report
        for _lane, counts in engine.fold(lane):
            return "counted", counts
        time.sleep(0.01)
    raise AssertionError("the lane neither counted nor handed back its probe")


def test_endless_headers_go_back_to_python_at_the_head_cap(engine):
    with HostileServer([[["send", "HTTP/1.1 200 OK\r\n"], ["stream", "X-a: b\r\n", 8.0]]]) \
            as server:
        verdict, report = outcome(engine, offload(engine, server.port, 0))
        assert verdict == "handed back" and report[1] == native_lane.DIFFERENT, report


def test_one_endless_header_line_goes_back_to_python(engine):
    with HostileServer([[["send", "HTTP/1.1 200 OK\r\nX-a: "], ["stream", "v", 8.0]]]) \
            as server:
        verdict, report = outcome(engine, offload(engine, server.port, 0))
        assert verdict == "handed back" and report[1] == native_lane.DIFFERENT, report


def test_endless_chunk_extensions_go_back_to_python_at_the_after_head_cap(engine):
    chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;ext="
    with HostileServer([[["send", chunked], ["stream", "e", 8.0]]]) as server:
        verdict, report = outcome(engine, offload(engine, server.port, 0))
        assert verdict == "handed back" and report[1] == native_lane.DIFFERENT, report


def test_a_head_at_the_cap_counts_and_one_byte_more_goes_back(engine):
    cap = fastlane.HEAD_CAP_BYTES
    cases = [[["send", head_of(cap)], ["hang", 8.0]],
             [["send", head_of(cap + 1)], ["hang", 8.0]]]
    with HostileServer(cases) as server:
        assert outcome(engine, offload(engine, server.port, 0))[0] == "counted"
        verdict, report = outcome(engine, offload(engine, server.port, 1))
        assert verdict == "handed back" and report[1] == native_lane.DIFFERENT, report


def test_a_body_in_one_byte_chunks_is_the_same_success_as_in_python(engine):
    # 10 KiB of body takes 60 KiB in 1-byte chunks: within the cap on what follows
    # the head, as in the Python handler.
    body = "1\r\nx\r\n" * (fastlane.BODY_CAP_BYTES + 10) + "0\r\n\r\n"
    answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with HostileServer([[["send", answer], ["hang", 8.0]]]) as server:
        assert outcome(engine, offload(engine, server.port, 0))[0] == "counted"


def test_an_answer_bigger_than_one_turns_budget_is_read_to_its_end(engine):
    # Sent in one burst, then silence: after the first turn's budget nothing new
    # arrives, so only the engine's own ready list can bring the socket back.
    head = head_of(fastlane.HEAD_CAP_BYTES // 2, content_length=fastlane.BODY_CAP_BYTES)
    answer = head + "x" * fastlane.BODY_CAP_BYTES
    assert len(answer) > fastlane.READ_BUDGET_BYTES
    with HostileServer([[["send", answer], ["hang", 8.0]]]) as server:
        assert outcome(engine, offload(engine, server.port, 0))[0] == "counted"


def test_an_answer_trickling_past_the_timeout_is_a_timeout(engine):
    answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with HostileServer([[["drip", answer, 1, 0.05], ["hang", 8.0]]]) as server:
        lane = offload(engine, server.port, 0, timeout=0.5)
        verdict, report = outcome(engine, lane)
        assert verdict == "handed back" and report[1] == native_lane.TIMEOUT, report
        assert report[4] >= 0.5  # it ran its whole timeout, no more is asserted


def test_a_second_init_is_refused_and_changes_nothing(engine):
    with HostileServer([[["send", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
                         ["hang", 8.0]]]) as server:
        lane = offload(engine, server.port, 0)
        with pytest.raises(RuntimeError):
            engine.__init__([0.001] * 32)
        verdict, counts = outcome(engine, lane)
        assert verdict == "counted"
        assert len(counts[1]) == len(DURATION_BUCKETS) + 1 and sum(counts[1]) == counts[0]
