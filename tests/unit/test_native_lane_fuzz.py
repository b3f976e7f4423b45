"""The native lane against a seeded random corpus of hostile answers.

A hostile server (tests/unit/hostile_http.py, in a subprocess) answers each probe
from a corpus made from one seed: any status, right and wrong content lengths,
chunking with and without extensions, truncation, resets, slow drip, huge and many
headers, endless streams, garbage. For a few seconds the test keeps a few dozen
lanes in flight against it, each making one attempt, while it takes reports and
folds counts the way the daemon does. What must hold:

- nothing crashes (the sanitizer step of scripts/test runs this under ASan/UBSan);
- every attempt ends, handed back or counted, by its timeout plus SLACK_SECONDS
  (a bound on waiting, not a speed claim); a timeout is reported no earlier than
  its timeout;
- a healthy lane beside the hostile ones is never judged different.

How long a Python thread was held up meanwhile (a thread ticking every 1 ms records
its largest gap) and the longest single engine call are printed, not asserted: the
machine is shared. Run with -s to see them; VMHEALTH_FUZZ_SEED and
VMHEALTH_FUZZ_SECONDS change the corpus and the length of the run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

from tests.ci import NO_LANE, require_module
from tests.unit.hostile_http import HostileServer

from vmhealth.monitor import native_lane
from vmhealth.monitor.metrics import DURATION_BUCKETS

fastlane = require_module("vmhealth_fastlane", NO_LANE)

SEED = int(os.environ.get("VMHEALTH_FUZZ_SEED", "20261204"))
FUZZ_SECONDS = float(os.environ.get("VMHEALTH_FUZZ_SECONDS", "3"))
CASES = 160
IN_FLIGHT = 24
TIMEOUTS = (0.2, 0.5, 1.0)
SLACK_SECONDS = 2.0  # how long past its timeout an attempt may take to be seen ending
HEALTHY = 0  # the corpus' first case: a plain 200, for the healthy lanes beside


# -- the corpus ------------------------------------------------------------------


def _headers(rng: random.Random) -> str:
    names = ("Server", "X-Trace", "Set-Cookie", "Cache-Control", "Vary", "X-A")
    return "".join(f"{rng.choice(names)}: {'v' * rng.randint(0, 64)}\r\n"
                   for _ in range(rng.randint(0, 8)))


def _chunked(rng: random.Random, body: str) -> str:
    out, at = [], 0
    while at < len(body):
        size = rng.randint(1, 4096)
        extension = ";e=" + "x" * rng.choice((0, 10, 1000, 70000)) if rng.random() < 0.2 else ""
        out.append(f"{len(body[at:at + size]):x}{extension}\r\n{body[at:at + size]}\r\n")
        at += size
    trailer = "X-T: t\r\n" if rng.random() < 0.3 else ""
    return "".join(out) + "0\r\n" + trailer + "\r\n"


def _answer(rng: random.Random) -> str:
    status = rng.choice((200, 200, 200, 200, 204, 301, 404, 500, 503, 101, 100, 999))
    body = "b" * rng.choice((0, 2, 100, 5000, 12000, 40000))
    framing = rng.choice(("length", "length", "wrong length", "chunked", "eof"))
    head = f"HTTP/1.1 {status} X\r\n" + _headers(rng)
    if framing == "length":
        return head + f"Content-Length: {len(body)}\r\n\r\n" + body
    if framing == "wrong length":
        return head + f"Content-Length: {len(body) + rng.randint(-2, 5000)}\r\n\r\n" + body
    if framing == "chunked":
        return head + "Transfer-Encoding: chunked\r\n\r\n" + _chunked(rng, body)
    return head + "\r\n" + body  # ends with the stream, if the stream ends


def _ending(rng: random.Random) -> list:
    return [rng.choice((["hang", 3.0], ["close"], ["reset"]))]


def _whole(rng):
    return [["send", _answer(rng)], *_ending(rng)]


def _truncated(rng):
    answer = _answer(rng)
    return [["send", answer[:rng.randint(0, len(answer))]], *_ending(rng)]


def _dripped(rng):
    return [["drip", _answer(rng), rng.randint(1, 512), rng.uniform(0.001, 0.05)],
            *_ending(rng)]


def _many_headers(rng):
    lines = "".join(f"X-{n}: v\r\n" for n in range(rng.randint(100, 12000)))
    return [["send", "HTTP/1.1 200 OK\r\n" + lines + "Content-Length: 0\r\n\r\n"],
            *_ending(rng)]


def _huge_header(rng):
    value = "v" * rng.randint(1024, 200 * 1024)
    return [["send", f"HTTP/1.1 200 OK\r\nX-Big: {value}\r\nContent-Length: 0\r\n\r\n"],
            *_ending(rng)]


def _endless(rng):
    start, line = rng.choice((("HTTP/1.1 200 OK\r\n", "X-a: b\r\n"),
                              ("HTTP/1.1 200 OK\r\nX-a: ", "v"),
                              ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;e=",
                               "e"),
                              ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                               "1\r\nx\r\n")))
    return [["send", start], ["stream", line, 5.0], *_ending(rng)]


def _garbage(rng):
    return [["send", "".join(chr(rng.randint(0, 255)) for _ in range(rng.randint(1, 3000)))],
            *_ending(rng)]


def _silent(rng):
    return [["hang", 3.0]]


def _reset_at_once(rng):
    return [["reset"]]


MAKERS = (_whole, _whole, _truncated, _dripped, _many_headers, _huge_header, _endless,
          _garbage, _silent, _reset_at_once)


def make_corpus(rng: random.Random) -> list:
    healthy = [["send", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], ["hang", 8.0]]
    return [healthy] + [rng.choice(MAKERS)(rng) for _ in range(CASES - 1)]


# -- the run ---------------------------------------------------------------------


class StallMeter:
    """A Python thread that wants to run every 1 ms; its largest gap is how long the
    interpreter was held up (by the engine's calls, or by the machine)."""

    def __init__(self) -> None:
        self.largest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.largest = max(self.largest, now - last)
            last = now

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Attempt:
    case: int
    timeout: float
    offloaded_at: float


@dataclass
class Tally:
    attempts: int = 0
    counted: int = 0
    reasons: dict[int, int] = field(default_factory=dict)
    late_reports: list[str] = field(default_factory=list)
    early_timeouts: list[str] = field(default_factory=list)
    unended: list[str] = field(default_factory=list)
    latest_end: float = -1.0  # the latest an attempt was seen ending, past its timeout
    longest_call: float = 0.0
    healthy_counted: int = 0
    healthy_different: int = 0


class Fuzz:
    def __init__(self, engine, port: int, rng: random.Random) -> None:
        self.engine, self.port, self.rng = engine, port, rng
        self.flight: dict[int, Attempt] = {}
        self.healthy: set[int] = set()
        self.tally = Tally()

    def _call(self, method, *args):
        started = time.perf_counter()
        try:
            return method(*args)
        finally:
            self.tally.longest_call = max(self.tally.longest_call,
                                          time.perf_counter() - started)

    def _offload(self, case: int, timeout: float, period: float, tcp: bool = False) -> int:
        request = None if tcp else (f"GET /case/{case} HTTP/1.1\r\nHost: x\r\n"
                                    "Connection: close\r\n\r\n").encode()
        now = time.monotonic()
        return self._call(self.engine.offload, "127.0.0.1", self.port, request, 200,
                          timeout, period, now, float("inf"))

    def start_healthy(self) -> None:
        self.healthy.add(self._offload(HEALTHY, 5.0, 0.05))
        self.healthy.add(self._offload(HEALTHY, 5.0, 0.05, tcp=True))

    def top_up(self) -> None:
        while len(self.flight) < IN_FLIGHT:
            case, timeout = self.rng.randrange(1, CASES), self.rng.choice(TIMEOUTS)
            lane = self._offload(case, timeout, 60.0, tcp=self.rng.random() < 0.05)
            self.flight[lane] = Attempt(case, timeout, time.monotonic())
            self.tally.attempts += 1

    def _ended(self, lane: int) -> Attempt:
        attempt = self.flight.pop(lane)
        past = time.monotonic() - attempt.offloaded_at - attempt.timeout
        self.tally.latest_end = max(self.tally.latest_end, past)
        return attempt

    def take(self) -> None:
        for lane, reason, _tick, _started, duration, _counts in self._call(
                self.engine.take_reports):
            if lane in self.healthy:
                self.tally.healthy_different += reason == native_lane.DIFFERENT
                continue
            attempt = self._ended(lane)
            self.tally.reasons[reason] = self.tally.reasons.get(reason, 0) + 1
            what = f"case {attempt.case} timeout {attempt.timeout}: {duration:.3f} s"
            if duration > attempt.timeout + SLACK_SECONDS:
                self.tally.late_reports.append(what)
            if reason == native_lane.TIMEOUT and duration < attempt.timeout - 1e-3:
                self.tally.early_timeouts.append(what)
        for lane, counts in self._call(self.engine.fold, None):
            if lane in self.healthy:
                self.tally.healthy_counted += counts[0]
            elif lane in self.flight:
                self._ended(lane)
                self._call(self.engine.recall, lane)  # one attempt each
                self.tally.counted += 1

    def give_up_on_overdue(self) -> None:
        now = time.monotonic()
        for lane, attempt in list(self.flight.items()):
            if now > attempt.offloaded_at + attempt.timeout + SLACK_SECONDS:
                self.tally.unended.append(f"case {attempt.case} timeout {attempt.timeout}")
                del self.flight[lane]
                self._call(self.engine.recall, lane)


def idle_stall(seconds: float) -> float:
    """The largest gap of the same meter with no engine at all: the machine's own."""
    with StallMeter() as meter:
        time.sleep(seconds)
    return meter.largest


def test_hostile_corpus_never_stalls_python_and_every_attempt_ends():
    rng = random.Random(SEED)
    corpus = make_corpus(rng)
    baseline = idle_stall(0.5)
    engine = fastlane.Engine(DURATION_BUCKETS)
    try:
        with HostileServer(corpus) as server, StallMeter() as meter:
            fuzz = Fuzz(engine, server.port, rng)
            fuzz.start_healthy()
            stop_offloading = time.monotonic() + FUZZ_SECONDS
            give_up = stop_offloading + max(TIMEOUTS) + SLACK_SECONDS + 1.0
            while time.monotonic() < give_up and (fuzz.flight or
                                                  time.monotonic() < stop_offloading):
                if time.monotonic() < stop_offloading:
                    fuzz.top_up()
                fuzz.take()
                fuzz.give_up_on_overdue()
                time.sleep(0.002)
            fuzz.give_up_on_overdue()
            stall = meter.largest
    finally:
        engine.close()
    tally = fuzz.tally
    print(f"\nnative lane fuzz (seed {SEED}, {FUZZ_SECONDS:g} s): {tally.attempts} attempts,"
          f" {tally.counted} counted, handed back by reason {tally.reasons};"
          f" largest Python stall {stall * 1000:.1f} ms (the same meter with no engine:"
          f" {baseline * 1000:.1f} ms); longest engine call {tally.longest_call * 1000:.2f} ms;"
          f" latest end past its timeout {tally.latest_end * 1000:.0f} ms;"
          f" healthy lanes' successes {tally.healthy_counted}")
    assert not tally.unended, f"attempts that never ended: {tally.unended}"
    assert not tally.late_reports, f"attempts that ran past timeout + slack: {tally.late_reports}"
    assert not tally.early_timeouts, f"timeouts reported early: {tally.early_timeouts}"
    assert tally.healthy_different == 0  # a healthy answer is never judged different
    assert tally.attempts > IN_FLIGHT and tally.counted + sum(tally.reasons.values()) \
        == tally.attempts
