"""The callback-driven connections under the tcpSocket and plain httpGet probes (dial.py).

Raw sockets on loopback stand in for the guest, so each test can see exactly how the
probe's connection ended (reset, not an orderly close) and that nothing is left open.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from tests.unit.test_probes import FakeAccess, free_port, probe_of

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.probes.dial import Dial, sockaddr


def listener(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(8)
    return sock


def how_it_ended(conn: socket.socket) -> str:
    """'reset' or 'closed' (orderly FIN), read on the server's side of a connection."""
    conn.settimeout(2)
    try:
        data = conn.recv(1)
    except ConnectionResetError:
        return "reset"
    return "closed" if data == b"" else f"data {data!r}"


async def start_http_probe(server: socket.socket, timeout: float = 0.5):
    """Start an httpGet probe against `server`; (probe task, its connection, request)."""
    loop = asyncio.get_running_loop()
    handler = spec.HttpGet(port=server.getsockname()[1])
    probe = asyncio.ensure_future(run_probe(probe_of(handler, timeout), FakeAccess()))
    conn, _ = await loop.run_in_executor(None, server.accept)
    conn.settimeout(2)
    return probe, conn, conn.recv(4096)


def tcp_probe_and_how_it_ended():
    """Run one tcpSocket probe against a fresh listener: (result, how its connection ended)."""
    server = listener()
    port = server.getsockname()[1]
    with server:
        result = asyncio.run(run_probe(probe_of(spec.TcpSocket(port=port)), FakeAccess()))
        conn, _ = server.accept()
        with conn:
            return result, how_it_ended(conn)


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
    assert result.message.endswith(f"HTTP 503 from GET http://127.0.0.1:{port}/: warming up")


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


class Attempt:
    """A Dial whose end can be awaited (the probes hear of it through a callback)."""

    def __init__(self, loop, family, address, deadline, request=None, sink=None):
        self.done = loop.create_future()
        self.dial = Dial(loop, family, address, deadline, self._ended, request, sink)
        # The constructor never reports an end itself, even for an immediate failure.
        assert not self.done.done()

    def _ended(self, error):
        assert not self.done.done(), "a Dial reports its end once"
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


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
