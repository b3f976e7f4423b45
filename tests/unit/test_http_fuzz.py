"""Fuzzing the httpGet handler with hostile answers from a seeded random corpus.

A server in a process of its own answers each probe with corpus entry N (the probe
asks for /fuzz/N): statuses (interim 1xx ones too), Content-Length, chunked and
EOF-delimited bodies, truncation, resets, slow drips, huge and many headers, endless
trailers, garbage. The entry says what the verdict must be. For a few seconds probes
run concurrently through the real handler, and every one must end with the expected
verdict within timeoutSeconds plus a slack, with no exception escaping.

Alongside, a loop callback ticking every millisecond records the largest gap between
ticks: the longest any callback held the event loop. It is printed (run pytest with
-s to see it), not asserted: speed belongs in benchmarks/ (docs/probes.md records the
figure).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass

from tests.unit.test_http_hostile import read_request_head
from tests.unit.test_probes import FakeAccess, probe_of

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.probes.http import MAX_HEAD_BYTES

SEED = 20261204
BUDGET_SECONDS = 4.0  # how long new probes are started
TIMEOUT = 2.0  # each probe's timeoutSeconds
SLACK = 5.0  # what a probe may take beyond its timeout on a loaded machine
CONCURRENCY = 16
CORPUS_SIZE = 1500  # more than BUDGET_SECONDS lets start on this machine
DRIP_SECONDS = 0.1  # a finite drip lasts at most this long: far below TIMEOUT

TIMED_OUT = "timed out after"
BROKEN = ("invalid HTTP response", "closed before a complete response", "reset by peer",
          "broken pipe")


@dataclass(frozen=True)
class Entry:
    """One hostile answer: what the server does, and the verdict it must bring."""

    kind: str
    steps: tuple  # ("send", bytes) | ("drip", bytes, pieces) | ("trickle", bytes)
    #               | ("close",) | ("reset",) | ("hold",), in order
    expect: Outcome
    says: tuple[str, ...]  # the message contains one of these


# ---------------------------------------------------------------------------
# The corpus: entry N is made from Random(f"{SEED}:{N}") in both processes
# ---------------------------------------------------------------------------

def corpus_entry(index: int) -> Entry:
    rng = random.Random(f"{SEED}:{index}")
    make = rng.choices(list(_MAKERS), weights=[w for w, _ in _MAKERS.values()])[0]
    return _MAKERS[make][1](rng)


def _status_line(rng: random.Random, status: int) -> bytes:
    reason = rng.choice([b"OK", b"X", b"", b"Service Unavailable", b"weird reason \xe9"])
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def _interim(rng: random.Random) -> bytes:
    answers = b""
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        status = rng.choice([100, 102, 103])
        extra = b"Link: </s.css>; rel=preload\r\n" if status == 103 else b""
        answers += _status_line(rng, status) + extra + b"\r\n"
    return answers


def _final_status(rng: random.Random, *, with_body: bool = False) -> int:
    statuses = [200, 200, 299, 302, 399, 400, 404, 500, 503]
    return rng.choice(statuses if with_body else statuses + [204, 304])  # 204, 304: no body


def _verdict(status: int) -> tuple[Outcome, tuple[str, ...]]:
    outcome = Outcome.SUCCESS if 200 <= status < 400 else Outcome.FAILURE
    return outcome, (f"HTTP {status} from GET",)


def _body(rng: random.Random, status: int) -> tuple[bytes, bytes, bool]:
    """(framing headers, body bytes, whether the end of the stream ends the body)."""
    if status in (204, 304):
        return b"", b"", False
    size = rng.choice([0, 1, 100, 5000, 10 * 1024, 30 * 1024])
    body = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1)
    body = body[:size]
    framing = rng.choice(["length", "chunked", "eof"])
    if framing == "length":
        return b"Content-Length: %d\r\n" % size, body, False
    if framing == "eof":
        return b"", body, True
    chunks, offset = b"", 0
    while offset < size:
        length = min(rng.choice([1, 7, 100, 4096]), size - offset)
        ext = rng.choice([b"", b"", b";x=1"])
        chunks += b"%x%s\r\n%s\r\n" % (length, ext, body[offset:offset + length])
        offset += length
        if len(chunks) > 40 * 1024:  # 1-byte chunks of a big body: the 10 KiB cap ends it
            break
    else:
        chunks += b"0\r\n" + rng.choice([b"", b"X-Trailer: t\r\n"]) + b"\r\n"
    return b"Transfer-Encoding: chunked\r\n", chunks, False


def _complete(rng: random.Random) -> Entry:
    status = _final_status(rng)
    framing, body, eof_ends = _body(rng, status)
    head = _interim(rng) + _status_line(rng, status) + framing + b"Server: fuzz\r\n\r\n"
    ending = ("close",) if eof_ends else rng.choice([("close",), ("reset",), ("hold",)])
    if eof_ends and rng.random() < 0.3:
        ending = ("reset",)  # a reset after the head ends the body as an EOF does
    outcome, says = _verdict(status)
    return Entry("complete", (("send", head + body), ending), outcome, says)


def _truncated(rng: random.Random) -> Entry:
    status = _final_status(rng, with_body=True)
    head = _interim(rng) + _status_line(rng, status) + b"Content-Length: 100\r\n\r\n"
    if rng.random() < 0.5:  # cut inside the head: never an answer
        cut = rng.randrange(1, len(head) - 1)
        ending = rng.choice([("close",), ("reset",)])
        return Entry("truncated head", (("send", head[:cut]), ending), Outcome.FAILURE,
                     BROKEN)
    if rng.random() < 0.5:  # the head, part of the body, then silence
        return Entry("truncated body, held", (("send", head + b"x" * 10), ("hold",)),
                     Outcome.FAILURE, (TIMED_OUT,))
    # The head, part of the announced body, then the end: a failure whatever the status,
    # as in kubelet, whose read of the body ends in an unexpected EOF (docs/probes.md).
    ending = rng.choice([("close",), ("reset",)])
    return Entry("truncated body, closed", (("send", head + b"x" * 10), ending),
                 Outcome.FAILURE, ("closed before the end of the body", "reset by peer"))


def _garbage(rng: random.Random) -> Entry:
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 50, 3000])))
    start = rng.choice([b"SSH-2.0-OpenSSH_9.2\r\n", b"\x16\x03\x01\x02\x00", b"HTTP/9.9 200",
                        b"HTTP/1.1 2000 OK\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"])
    ending = rng.choice([("close",), ("reset",), ("hold",)])
    says = BROKEN + ((TIMED_OUT,) if ending == ("hold",) else ())
    return Entry("garbage", (("send", start + junk), ending), Outcome.FAILURE, says)


def _huge_header(rng: random.Random) -> Entry:
    status = _final_status(rng)
    start = _status_line(rng, status) + b"Content-Length: 0\r\nX-Big: "
    if rng.random() < 0.5:  # fits: the status decides
        size = rng.randrange(1, MAX_HEAD_BYTES - len(start) - 100)
        outcome, says = _verdict(status)
        kind = "big header"
    else:
        size = rng.choice([MAX_HEAD_BYTES, 1024 * 1024, 8 * 1024 * 1024])
        outcome, says = Outcome.FAILURE, ("status line and headers over",)
        kind = "huge header"
    answer = start + b"v" * size + b"\r\n\r\n"
    return Entry(kind, (("send", answer), ("hold",)), outcome, says)


def _many_headers(rng: random.Random) -> Entry:
    status = _final_status(rng)
    count = rng.choice([100, 1000, 5000, 200_000])
    line = b"X-H: %s\r\n" % (b"v" * rng.choice([1, 10, 40]))
    head = _status_line(rng, status) + b"Content-Length: 0\r\n" + line * count + b"\r\n"
    if len(head) <= MAX_HEAD_BYTES:
        outcome, says = _verdict(status)
    else:
        outcome, says = Outcome.FAILURE, ("status line and headers over",)
    return Entry("many headers", (("send", head), ("hold",)), outcome, says)


def _endless_interim(rng: random.Random) -> Entry:
    answers = _status_line(rng, 103) + b"Link: </a>\r\n\r\n"
    return Entry("endless interim", (("send", answers * (MAX_HEAD_BYTES // len(answers) + 10)),
                                     ("hold",)), Outcome.FAILURE,
                 ("status line and headers over",))


def _endless_trailers(rng: random.Random) -> Entry:
    status = _final_status(rng, with_body=True)
    head = _status_line(rng, status) + b"Transfer-Encoding: chunked\r\n\r\n"
    return Entry("endless trailers",
                 (("send", head + b"1\r\nx\r\n0\r\nX-T: " + b"t" * 512 * 1024), ("hold",)),
                 Outcome.FAILURE, ("chunk framing or trailers",))


def _drip(rng: random.Random) -> Entry:
    status = _final_status(rng)
    answer = (_interim(rng) + _status_line(rng, status) + b"Content-Length: 2\r\n"
              + b"X-Pad: p\r\n" * rng.randrange(5) + b"\r\nok")
    outcome, says = _verdict(status)
    return Entry("slow drip", (("drip", answer, rng.choice([3, 10, 30])), ("hold",)),
                 outcome, says)


def _trickle(rng: random.Random) -> Entry:
    return Entry("endless trickle", (("trickle", _status_line(rng, 200) + b"X-Slow: "),),
                 Outcome.FAILURE, (TIMED_OUT,))


def _hang(rng: random.Random) -> Entry:
    return Entry("no answer", (("hold",),), Outcome.FAILURE, (TIMED_OUT,))


def _at_once(rng: random.Random) -> Entry:
    ending = rng.choice([("close",), ("reset",)])
    return Entry(f"{ending[0]} at once", (ending,), Outcome.FAILURE, BROKEN)


_MAKERS = {  # name: (weight, maker)
    "complete": (30, _complete), "truncated": (8, _truncated), "garbage": (6, _garbage),
    "huge header": (8, _huge_header), "many headers": (6, _many_headers),
    "endless interim": (2, _endless_interim), "endless trailers": (2, _endless_trailers),
    "drip": (6, _drip), "trickle": (2, _trickle), "hang": (2, _hang),
    "at once": (4, _at_once),
}


# ---------------------------------------------------------------------------
# The hostile server (a process of its own: its work never shows in our loop)
# ---------------------------------------------------------------------------

_RESET = struct.pack("ii", 1, 0)


def serve(ready, count: int) -> None:
    """Listen on 127.0.0.1; send the port and what the first `count` entries expect
    (kind, outcome, says) through `ready`; answer until killed. (Building an entry's
    bytes takes milliseconds: done here, it never shows as a stall of the probes.)"""
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    expected = []
    for index in range(count):
        entry = corpus_entry(index)
        expected.append((entry.kind, entry.expect, entry.says))
    ready.send((sock.getsockname()[1], expected))
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def _answer(conn: socket.socket) -> None:
    conn.settimeout(TIMEOUT + SLACK)
    try:
        head = read_request_head(conn)
        if not head:
            return
        index = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
        for step in corpus_entry(index).steps:
            _do(conn, step)
    except OSError:
        pass  # the probe reset the connection: it had enough
    finally:
        conn.close()


def _do(conn: socket.socket, step: tuple) -> None:
    action = step[0]
    if action == "send":
        conn.sendall(step[1])
    elif action == "drip":
        data, pieces = step[1], step[2]
        size = -(-len(data) // pieces)
        for offset in range(0, len(data), size):
            conn.sendall(data[offset:offset + size])
            time.sleep(DRIP_SECONDS / pieces)
    elif action == "trickle":  # then one byte every 10 ms until the probe gives up
        conn.sendall(step[1])
        for _ in range(int((TIMEOUT + SLACK) / 0.01)):
            conn.sendall(b"s")
            time.sleep(0.01)
    elif action == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.close()
    elif action == "close":
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):  # until the probe resets
            pass
    elif action == "hold":
        while conn.recv(4096):
            pass


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------

class StallMeter:
    """A callback every 1 ms; `largest` is the longest gap seen between two of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.largest, self.in_flight_then = loop, 0.0, ""
        self.in_flight: dict[int, str] = {}
        self._last = loop.time()
        self._handle = loop.call_later(0.001, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        if now - self._last > self.largest:
            self.largest = now - self._last
            self.in_flight_then = ", ".join(sorted(set(self.in_flight.values())))
        self._last = now
        self._handle = self.loop.call_later(0.001, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


Expected = tuple[str, Outcome, tuple[str, ...]]  # (kind, outcome, the message says one of)


async def fuzz(port: int, corpus: list[Expected]
               ) -> tuple[list[tuple[int, Expected, object]], StallMeter]:
    loop = asyncio.get_running_loop()
    meter = StallMeter(loop)
    gate = asyncio.Semaphore(CONCURRENCY)
    outcomes: list[tuple[int, Expected, object]] = []
    access = FakeAccess()

    async def one(index: int) -> None:
        entry = corpus[index]
        probe = probe_of(spec.HttpGet(port=port, path=f"/fuzz/{index}"), TIMEOUT)
        meter.in_flight[index] = entry[0]
        try:
            result: object = await asyncio.wait_for(run_probe(probe, access), TIMEOUT + SLACK)
        except BaseException as exc:  # noqa: BLE001 - recorded: the test fails on it
            result = exc
        finally:
            del meter.in_flight[index]
            gate.release()
        outcomes.append((index, entry, result))

    tasks = []
    end = loop.time() + BUDGET_SECONDS
    index = 0
    while loop.time() < end and index < len(corpus):
        await gate.acquire()
        tasks.append(loop.create_task(one(index)))
        index += 1
    await asyncio.wait(tasks, timeout=TIMEOUT + 2 * SLACK)
    meter.stop()
    assert all(task.done() for task in tasks), "a probe did not end"
    return outcomes, meter


def test_hostile_answers_end_in_time_with_the_expected_verdicts(capsys):
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    server = context.Process(target=serve, args=(send, CORPUS_SIZE), daemon=True)
    server.start()
    try:
        assert receive.poll(60), "the fuzz server did not start"
        port, corpus = receive.recv()
        outcomes, meter = asyncio.run(fuzz(port, corpus))
    finally:
        server.kill()
        server.join(5)

    wrong = []
    for index, (kind, expect, says), result in outcomes:
        if isinstance(result, BaseException):
            wrong.append(f"#{index} {kind}: raised {result!r}")
        elif result.outcome is not expect or not any(s in result.message for s in says):
            wrong.append(f"#{index} {kind}: {result.outcome.value} {result.message[:200]!r}, "
                         f"expected {expect.value} saying one of {says}")
    kinds = sorted({kind for _, (kind, _, _), _ in outcomes})
    with capsys.disabled():
        print(f"\nhttp fuzz: {len(outcomes)} hostile answers ({len(kinds)} kinds), "
              f"largest event-loop stall {meter.largest * 1000:.1f} ms "
              f"(in flight then: {meter.in_flight_then or 'none'})")
    assert not wrong, "\n".join(wrong[:20])
    assert len(kinds) >= 8  # the seed's corpus reached most kinds in the time given
