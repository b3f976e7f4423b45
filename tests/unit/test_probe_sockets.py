"""The shared epoll and reused sockets under plain probe connections (probes/sockets.py).

Raw listening sockets on loopback stand in for guests, so each test can see how every
connection ended and which client socket made it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest
from tests.unit.dial_support import (
    Attempt,
    how_it_ended,
    listener,
    tcp_probe_and_how_it_ended,
)
from tests.unit.probe_support import FakeAccess, probe_of

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.probes import run_probe, sockets
from vmhealth.monitor.probes.dial import sockaddr


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tcp_probes_reuse_one_socket_and_reset_every_connection():
    server = listener()
    port = server.getsockname()[1]

    async def three_probes():
        results = []
        for _ in range(3):
            results.append(await run_probe(probe_of(spec.TcpSocket(port=port)), FakeAccess()))
        return results

    with server:
        results = asyncio.run(three_probes())
        peers = []
        for _ in range(3):
            conn, peer = server.accept()
            with conn:
                peers.append(peer)
                assert how_it_ended(conn) == "reset"
    assert [r.outcome for r in results] == [Outcome.SUCCESS] * 3
    assert len(set(peers)) == 3  # a new source port (a new connection) every time


def test_a_given_back_socket_serves_the_next_connection():
    server = listener()
    port = server.getsockname()[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        probe_sockets = sockets.for_loop(loop)
        seen = []
        for _ in range(2):
            family, address = sockaddr("127.0.0.1", port)
            attempt = Attempt(loop, family, address, loop.time() + 2)
            seen.append(attempt.dial._sock.fileno())
            await attempt.done
            await asyncio.sleep(0)  # let a dispatch round that gave it back finish
        return seen, len(probe_sockets._idle[socket.AF_INET])

    with server:
        (first, second), idle = asyncio.run(scenario())
    assert first == second
    assert idle == 1


def test_a_reused_socket_still_connecting_reports_nothing():
    """Edge-triggered epoll re-checks a socket when it reports it: the reset that ended
    the previous connection must not look like the next connection succeeding."""
    answering = listener()
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)  # a full backlog: further connections stay in SYN_SENT
    fillers = []

    async def scenario():
        loop = asyncio.get_running_loop()
        family, address = sockaddr("127.0.0.1", answering.getsockname()[1])
        await Attempt(loop, family, address, loop.time() + 2).done  # connect, reset, give back
        family, address = sockaddr("127.0.0.1", full.getsockname()[1])
        reused = Attempt(loop, family, address, loop.time() + 0.3)
        await reused.done

    with answering, full:
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            filler.connect_ex(full.getsockname())
            fillers.append(filler)
        try:
            with pytest.raises(TimeoutError):
                asyncio.run(scenario())
        finally:
            for filler in fillers:
                filler.close()


def test_a_host_out_of_sockets_is_an_error_not_a_failure(monkeypatch):
    def no_socket(family):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(sockets, "_open", no_socket)
    monkeypatch.setattr(sockets, "_current", None)  # no idle sockets to fall back on
    result = asyncio.run(run_probe(probe_of(spec.TcpSocket(port=9)), FakeAccess()))
    assert result.outcome is Outcome.ERROR
    assert result.message == "cannot open a socket on the host: Too many open files"


def test_an_address_family_the_host_lacks_is_skipped_not_an_error(monkeypatch):
    real_open = sockets._open

    def no_ipv6(family):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real_open(family)

    monkeypatch.setattr(sockets, "_open", no_ipv6)
    monkeypatch.setattr(sockets, "_current", None)
    server = listener()
    port = server.getsockname()[1]
    with server:
        reached = asyncio.run(run_probe(probe_of(spec.TcpSocket(port=port)),
                                        FakeAccess(addrs=["fd00::5", "127.0.0.1"])))
        conn, _ = server.accept()
        conn.close()
    only_ipv6 = asyncio.run(run_probe(probe_of(spec.TcpSocket(port=port)),
                                      FakeAccess(addrs=["fd00::5"])))
    assert reached.outcome is Outcome.SUCCESS, reached.message
    assert only_ipv6.outcome is Outcome.FAILURE  # counted: the guest is unreachable
    assert "[fd00::5]:" in only_ipv6.message
    assert "address family not supported" in only_ipv6.message.lower()


def test_without_reuse_connections_still_end_with_a_reset(monkeypatch):
    monkeypatch.setattr(sockets, "_dissolve", None)
    result, ended = tcp_probe_and_how_it_ended()
    assert ended == "reset"
    assert result.outcome is Outcome.SUCCESS, result.message


def test_idle_sockets_are_capped(monkeypatch):
    monkeypatch.setattr(sockets, "IDLE_PER_FAMILY", 2)
    server = listener()
    port = server.getsockname()[1]

    async def five_at_once():
        loop = asyncio.get_running_loop()
        family, address = sockaddr("127.0.0.1", port)
        attempts = [Attempt(loop, family, address, loop.time() + 2) for _ in range(5)]
        await asyncio.gather(*(attempt.done for attempt in attempts))
        await asyncio.sleep(0)
        return len(sockets.for_loop(loop)._idle[socket.AF_INET])

    with server:
        assert asyncio.run(five_at_once()) == 2


def test_a_failing_handler_does_not_starve_the_others(caplog):
    server = listener()
    port = server.getsockname()[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        probe_sockets = sockets.for_loop(loop)

        def broken(events):
            raise RuntimeError("a bug in one handler")

        bad = probe_sockets.take(socket.AF_INET, broken)
        bad.connect_ex(("127.0.0.1", port))
        result = await run_probe(probe_of(spec.TcpSocket(port=port)), FakeAccess())
        probe_sockets.give_back(socket.AF_INET, bad)
        return result

    with server:
        result = asyncio.run(scenario())
    assert result.outcome is Outcome.SUCCESS, result.message
    assert "probe connection handler failed" in caplog.text


def test_a_new_event_loop_closes_the_old_loops_idle_sockets():
    server = listener()
    server.listen(64)  # room for every connection: nobody accepts them
    port = server.getsockname()[1]

    async def probes(count):
        for _ in range(count):
            await run_probe(probe_of(spec.TcpSocket(port=port)), FakeAccess())

    with server:
        asyncio.run(probes(3))
        before = open_fds()
        for _ in range(5):  # five loops: each replaces the last one's sockets
            asyncio.run(probes(3))
        assert open_fds() == before


def test_https_probe_on_a_host_out_of_sockets_is_an_error_too():
    async def scenario():
        loop = asyncio.get_running_loop()

        async def no_socket(*args, **kwargs):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        loop.create_connection = no_socket  # type: ignore[method-assign]
        handler = spec.HttpGet(port=443, scheme=spec.Scheme.HTTPS)
        return await run_probe(probe_of(handler), FakeAccess())

    result = asyncio.run(scenario())
    assert result.outcome is Outcome.ERROR
    assert result.message == "cannot open a socket on the host: Too many open files"


def test_one_dispatch_serves_at_most_one_batch_then_lets_the_loop_turn():
    """With more sockets ready than one batch, the rest wait one loop turn (epoll keeps
    them ready): a thousand guests flooding at once hold the loop for one batch each
    turn, not for all of them."""
    count = sockets._BATCH + 44
    server = listener()
    server.listen(count)
    port = server.getsockname()[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        probe_sockets = sockets.for_loop(loop)
        ticks, turns, taken = [0], [], []

        def tick():
            ticks[0] += 1
            loop.call_soon(tick)

        def on_event(events):
            turns.append(ticks[0])

        for _ in range(count):  # loopback connects complete within connect(): all ready
            sock = probe_sockets.take(socket.AF_INET, on_event)
            sock.connect_ex(("127.0.0.1", port))
            taken.append(sock)
        tick()
        deadline = loop.time() + 10  # wait until every socket was heard of (bounded)
        while len(turns) < count and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for sock in taken:
            probe_sockets.give_back(socket.AF_INET, sock)
        return turns

    with server:
        turns = asyncio.run(scenario())
    assert len(turns) >= count
    assert len(set(turns)) >= 2, "every ready socket was served in one loop callback"
