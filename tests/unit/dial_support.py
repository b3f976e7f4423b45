"""Helpers of the socket-level probe tests: listeners, how a connection ended, dial
attempts (a helper module; no tests)."""

from __future__ import annotations

import asyncio
import socket

from tests.unit.probe_support import FakeAccess, probe_of

from vmhealth import spec
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.probes.dial import Dial


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
