"""The native probe lane (src/native/fastlane.c, vmhealth.monitor.native_lane).

Engine level, against real loopback servers: what counts as the same success
(connected; the same HTTP status read to the end of the answer, the end of the stream
or 10 KiB of body) and what ends a lane and why (another answer, refused, no answer in
time, stale addresses); every connection ends with a reset; counts and duration
buckets add up; attempts reach the target on the tick schedule Python hands over.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tests.ci import NO_LANE, require_module

from vmhealth.monitor import native_lane
from vmhealth.monitor.metrics import DURATION_BUCKETS

fastlane = require_module("vmhealth_fastlane", NO_LANE)

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
PERIOD = 0.05
WAIT = 5.0  # seconds any expectation may take on a loaded machine


class Target:
    """A loopback server in a thread; `answer` decides what each connection gets:
    bytes to send after the request head, None to send nothing, "tcp" not to read."""

    def __init__(self, answer: bytes | str | None = OK, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after  # close (FIN) after answering; else wait for the peer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.arrivals: list[float] = []  # time.monotonic() of each accepted connection
        self.endings: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.arrivals.append(time.monotonic())
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        ending = "closed"  # every accepted connection records how it ended
        with conn:
            conn.settimeout(3)
            try:
                answer = self.answer
                if answer != "tcp":
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        head += chunk
                    if isinstance(answer, bytes):
                        conn.sendall(answer)
                    if self.close_after:
                        return
                    if answer is None:
                        time.sleep(3)
                        return
                ending = "reset" if _reset(conn) else "closed"
            except ConnectionResetError:
                ending = "reset"
            except OSError:
                ending = "error"
            finally:
                self.endings.append(ending)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _reset(conn: socket.socket) -> bool:
    try:
        conn.recv(1)
    except ConnectionResetError:
        return True
    return False


@pytest.fixture
def engine() -> Iterator:
    lane_engine = fastlane.Engine(DURATION_BUCKETS)
    yield lane_engine
    lane_engine.close()


def offload(engine, port: int, request: bytes | None = REQUEST, *, status: int = 200,
            timeout: float = 1.0, valid_for: float = float("inf")) -> int:
    now = time.monotonic()
    return engine.offload("127.0.0.1", port, request, status, timeout, PERIOD, now,
                          now + valid_for)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def all_reset(target: Target) -> bool:
    """Every connection the target accepted has ended, each with a reset."""
    wait_until(lambda: len(target.endings) == target.accepted, "every connection to end")
    return set(target.endings) == {"reset"}


def folds(engine, lane: int, at_least: int) -> list[tuple]:
    """The lane's folded counts until they add up to `at_least` successes (or WAIT)."""
    taken: list[tuple] = []
    deadline = time.monotonic() + WAIT
    while sum(counts[0] for counts in taken) < at_least and time.monotonic() < deadline:
        taken.extend(counts for _lane, counts in engine.fold(lane))
        time.sleep(0.02)
    return taken


def silent_count(engine, lane: int, at_least: int) -> int:
    return sum(counts[0] for counts in folds(engine, lane, at_least))


def next_report(engine) -> tuple:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        reports = engine.take_reports()
        if reports:
            assert len(reports) == 1, reports
            return reports[0]
        time.sleep(0.01)
    raise AssertionError("the engine handed nothing back")


def test_tcp_lane_counts_connects_silently_and_resets_each(engine):
    target = Target("tcp")
    try:
        lane = offload(engine, target.port, None)
        assert silent_count(engine, lane, 5) >= 5
        assert engine.take_reports() == []
        counts = engine.recall(lane)
        assert counts is not None and engine.recall(lane) is None  # gone after a recall
        assert all_reset(target)
    finally:
        target.close()


def test_http_lane_counts_the_same_status_and_resets_each(engine):
    target = Target(OK)
    try:
        lane = offload(engine, target.port)
        assert silent_count(engine, lane, 5) >= 5
        assert engine.take_reports() == []
        engine.recall(lane)
        assert all_reset(target)
    finally:
        target.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom",
    b"HTTP/1.1 204 No Content\r\n\r\n",  # also a success, but not the one repeated
    b"HTTP/1.1 301 Moved\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    b"this is not HTTP\r\n\r\n",
])
def test_another_answer_hands_the_tick_back(engine, answer):
    target = Target(answer)
    try:
        before, before_wall = time.monotonic(), time.time()
        lane = offload(engine, target.port)
        report_lane, reason, tick, started_at, duration, counts = next_report(engine)
        assert report_lane == lane and reason == native_lane.DIFFERENT
        assert before <= tick <= time.monotonic()
        assert before_wall <= started_at <= time.time()
        assert 0 <= duration < 1.0  # under its timeout, or it would be a TIMEOUT
        assert counts[0] == 0  # the first repetition already differed
        assert engine.recall(lane) is None  # handed back: nothing left to recall
    finally:
        target.close()


def test_refused_hands_the_tick_back(engine):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    lane = offload(engine, port, None)
    assert next_report(engine)[:2] == (lane, native_lane.DIFFERENT)


def test_no_answer_in_time_is_a_timeout_after_timeout_seconds(engine):
    target = Target(None)  # reads the request, never answers
    try:
        lane = offload(engine, target.port, timeout=0.3)
        report_lane, reason, _tick, _started, duration, _counts = next_report(engine)
        assert (report_lane, reason) == (lane, native_lane.TIMEOUT)
        assert duration >= 0.3  # never before its timeout (how long after: benchmarks)
    finally:
        target.close()


def test_stale_addresses_hand_the_tick_back_with_the_counts(engine):
    target = Target(OK)
    try:
        lane = offload(engine, target.port, valid_for=0.4)
        report_lane, reason, _tick, started_at, duration, counts = next_report(engine)
        assert (report_lane, reason) == (lane, native_lane.STALE)
        assert started_at == 0.0 and duration == 0.0  # no attempt began for that tick
        # The successes before it travel with the report: every attempt was one (any
        # other answer would have ended the lane), and none began after.
        assert counts[0] == target.accepted
    finally:
        target.close()


def test_a_body_ended_by_the_stream_or_the_10_kib_cap_is_the_same_success(engine):
    eof_body = Target(b"HTTP/1.1 200 OK\r\n\r\nno length, ends with the stream",
                      close_after=True)
    endless = Target(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 20000)
    try:
        eof_lane, endless_lane = offload(engine, eof_body.port), offload(engine, endless.port)
        assert silent_count(engine, eof_lane, 3) >= 3
        assert silent_count(engine, endless_lane, 3) >= 3
        assert engine.take_reports() == []
    finally:
        eof_body.close()
        endless.close()


def test_a_stream_closed_before_the_headers_hands_back(engine):
    target = Target(b"HTTP/1.1 200 OK\r\nContent-Le", close_after=True)
    try:
        lane = offload(engine, target.port)
        assert next_report(engine)[:2] == (lane, native_lane.DIFFERENT)
    finally:
        target.close()


def test_counts_and_buckets_add_up(engine):
    target = Target("tcp")
    try:
        before_wall = time.time()
        lane = offload(engine, target.port, None)
        taken = folds(engine, lane, 5)
        assert sum(counts[0] for counts in taken) >= 5
        for count, buckets, seconds, last_started_at, last_duration in taken:
            assert sum(buckets) == count and len(buckets) == len(DURATION_BUCKETS) + 1
            # Each success came in under its timeout (1 s), or it would be a TIMEOUT.
            assert 0 < seconds < count * 1.0 and 0 < last_duration < 1.0
            assert before_wall <= last_started_at <= time.time()
        counted = sum(counts[0] for counts in taken) + engine.recall(lane)[0]
        # Each fold took its successes and started afresh: no success is counted twice,
        # and at most the one attempt in flight at the recall went uncounted.
        wait_until(lambda: target.accepted >= counted, "the target to see every attempt")
        assert counted <= target.accepted <= counted + 1
    finally:
        target.close()


def test_attempts_reach_the_target_on_the_tick_schedule(engine):
    # Seen from the target: nothing before the first tick handed over, then at most one
    # attempt per tick (tick + k * period), late or skipped when the machine is busy
    # but never early and never twice (how late: benchmarks/bench_probes.py).
    target = Target("tcp")
    try:
        first_tick = time.monotonic() + 0.3
        lane = engine.offload("127.0.0.1", target.port, None, 0, 1.0, PERIOD, first_tick,
                              float("inf"))
        wait_until(lambda: len(target.arrivals) >= 6, "six attempts at the target")
        engine.recall(lane)
        # The j-th attempt comes no sooner than the j-th tick. A late stamp (the target's
        # thread was busy) only makes an arrival later, so load cannot fail this.
        early = [(j, arrival - (first_tick + j * PERIOD))
                 for j, arrival in enumerate(target.arrivals)
                 if arrival < first_tick + j * PERIOD]
        assert early == []
    finally:
        target.close()


def test_bad_offloads_are_refused_by_name(engine):
    with pytest.raises(ValueError, match="not an IP address literal"):
        engine.offload("guest.example", 80, None, 0, 1.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="port"):
        engine.offload("127.0.0.1", 0, None, 0, 1.0, 1.0, 0.0, 1.0)
    assert len(engine) == 0


def test_close_stops_the_thread_with_lanes_running():
    target = Target(None)
    lane_engine = fastlane.Engine(DURATION_BUCKETS)
    try:
        for _ in range(20):
            offload(lane_engine, target.port, timeout=5.0)
        # Attempts in flight, waiting for answers that never come.
        wait_until(lambda: target.accepted >= 20, "20 attempts in flight")
        closing = threading.Thread(target=lane_engine.close)
        closing.start()
        closing.join(timeout=WAIT)  # the thread answers within one turn: never a hang
        assert not closing.is_alive()
        with pytest.raises(RuntimeError, match="closed"):
            lane_engine.fold(None)
        lane_engine.close()  # twice is harmless
    finally:
        target.close()
