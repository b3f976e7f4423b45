"""The callback-driven connections under the tcpSocket and plain httpGet probes (dial.py).

Raw sockets on loopback stand in for the guest, so each test can see exactly how the
probe's connection ended (reset, not an orderly close) and that nothing is left open.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from tests.unit.dial_support import (
    Attempt,
    how_it_ended,
    listener,
    start_http_probe,
    tcp_probe_and_how_it_ended,
)
from tests.unit.probe_support import FakeAccess, free_port, probe_of

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.probes.dial import sockaddr


def test_tcp_probe_resets_its_connection_instead_of_closing():
    result, ended = tcp_probe_and_how_it_ended()
    assert ended == "reset"
    assert result.outcome is Outcome.SUCCESS, result.message


def test_http_probe_resets_after_a_complete_answer():
    server = listener()

    async def scenario():
        probe, conn, request = await start_http_probe(server)
        with conn:
            assert request.startswith(b"GET / HTTP/1.1\r\n")
            # Keep-alive style answer: the probe must not wait for the server to close.
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            result = await asyncio.wait_for(probe, 5)
            ended = await asyncio.get_running_loop().run_in_executor(None, how_it_ended, conn)
        return result, ended

    with server:
        result, ended = asyncio.run(scenario())
    assert result.outcome is Outcome.SUCCESS, result.message
    assert ended == "reset"


def test_http_body_delimited_by_the_end_of_the_connection():
    server = listener()
    port = server.getsockname()[1]

    async def scenario():
        probe, conn, _ = await start_http_probe(server)
        conn.sendall(b"HTTP/1.0 503 Service Unavailable\r\n\r\nwarming up")
        conn.close()
        return await asyncio.wait_for(probe, 5)

    with server:
        result = asyncio.run(scenario())
    assert result.outcome is Outcome.FAILURE
    # The status, never the body (bodies can hold secrets: Kubernetes issue 99425).
    assert result.message == f"HTTP 503 from GET http://127.0.0.1:{port}/"


def test_cancelled_probe_closes_its_connection_at_once():
    server = listener()

    async def scenario():
        probe, conn, _ = await start_http_probe(server, timeout=30)  # no answer follows
        with conn:
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            return await asyncio.get_running_loop().run_in_executor(None, how_it_ended, conn)

    with server:
        assert asyncio.run(scenario()) == "reset"


def test_host_name_from_the_spec_is_resolved():
    server = listener()
    port = server.getsockname()[1]
    with server:
        result = asyncio.run(run_probe(
            probe_of(spec.TcpSocket(port=port, host="localhost")), FakeAccess(addrs=[])))
    assert result.outcome is Outcome.SUCCESS, result.message


def test_unresolvable_host_name_is_a_failure_naming_it():
    result = asyncio.run(run_probe(
        probe_of(spec.TcpSocket(port=80, host="no-such-host.invalid")), FakeAccess()))
    assert result.outcome is Outcome.FAILURE
    assert "no-such-host.invalid:80" in result.message


def test_refused_first_address_moves_on_to_the_next():
    server = listener("127.0.0.1")  # nothing listens on 127.0.0.2
    port = server.getsockname()[1]
    with server:
        result = asyncio.run(run_probe(probe_of(spec.TcpSocket(port=port)),
                                       FakeAccess(addrs=["127.0.0.2", "127.0.0.1"])))
    assert result.outcome is Outcome.SUCCESS, result.message
    assert "connected to 127.0.0.1" in result.message


def test_dial_reports_refusal_as_connection_refused_error():
    async def scenario():
        loop = asyncio.get_running_loop()
        family, address = sockaddr("127.0.0.1", free_port())
        attempt = Attempt(loop, family, address, loop.time() + 2)
        await attempt.done

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(scenario())


def test_dial_deadline_while_waiting_for_an_answer():
    server = listener()
    port = server.getsockname()[1]

    class Never:
        def feed(self, data):
            return False

        def end_of_stream(self):
            raise AssertionError("not reached")

    async def scenario():
        loop = asyncio.get_running_loop()
        family, address = sockaddr("127.0.0.1", port)
        attempt = Attempt(loop, family, address, loop.time() + 0.2, b"hello", Never())
        await attempt.done

    with server, pytest.raises(TimeoutError):
        asyncio.run(scenario())


def test_sockaddr_knows_literals_from_names():
    assert sockaddr("10.0.0.5", 80) == (socket.AF_INET, ("10.0.0.5", 80))
    assert sockaddr("fd00::5", 80) == (socket.AF_INET6, ("fd00::5", 80, 0, 0))
    assert sockaddr("web1.example", 80) is None
    assert sockaddr("10.0.0.500", 80) is None


class Recording:
    """A sink that never has enough: notes the loop turn (`ticks[0]`) of every feed and
    can take `cost` seconds of the loop per feed, as a slow parser would."""

    def __init__(self, ticks: list[int], cost: float = 0.0) -> None:
        self.ticks, self.cost = ticks, cost
        self.turns: list[int] = []
        self.fed = 0

    def feed(self, data):
        self.turns.append(self.ticks[0])
        self.fed += len(data)
        if self.cost:
            time.sleep(self.cost)  # busy, as parsing would be: the loop is held
        return False

    def end_of_stream(self):
        pass


BUFFERED = 256 * 1024  # waiting in the socket before the Dial reads a byte


async def dial_with_buffered_answer(sink: Recording, deadline_in: float):
    """A Dial whose answer (BUFFERED bytes) is all in its socket before it reads: the
    server writes it with the event loop held, so one readiness event finds it all."""
    loop = asyncio.get_running_loop()
    server = listener()
    family, address = sockaddr("127.0.0.1", server.getsockname()[1])
    with server:
        attempt = Attempt(loop, family, address, loop.time() + deadline_in, b"GET", sink)
        server.settimeout(5)
        conn, _ = server.accept()  # the loop is held from here until the data is in
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            conn.settimeout(5)
            conn.sendall(b"x" * BUFFERED)
            finished, _ = await asyncio.wait({attempt.done}, timeout=10)
            assert finished, "the Dial did not end within 10 s"
            return attempt.done.exception()


def test_a_flood_is_read_in_bounded_slices_with_the_loop_turning_between():
    async def scenario():
        loop = asyncio.get_running_loop()
        ticks = [0]

        def tick():  # counts loop turns while the Dial reads
            ticks[0] += 1
            loop.call_soon(tick)

        tick()
        sink = Recording(ticks)
        ended = await dial_with_buffered_answer(sink, deadline_in=0.5)
        return sink, ended

    sink, ended = asyncio.run(scenario())
    assert isinstance(ended, TimeoutError)  # the sink never had enough
    assert sink.fed == BUFFERED  # every byte was read (edge-triggered: none left behind)
    assert len(set(sink.turns)) > 1, "all of it was read in one loop callback"


def test_the_deadline_is_checked_while_reading():
    # Each feed holds the loop 0.2 s; the deadline is 0.1 s away: after the first
    # slice, reading stops with a timeout instead of working through the rest.
    sink = Recording([0], cost=0.2)
    ended = asyncio.run(dial_with_buffered_answer(sink, deadline_in=0.1))
    assert isinstance(ended, TimeoutError)
    assert 0 < sink.fed < BUFFERED
