"""The floor for bench_probes.py: the same connections with no vmhealth code at all.

1,000 HTTP GETs and 1,000 TCP connects a second to the loopback targets, each domain
at its own random offset within the second, made by the leanest code the event loop
allows: one timer per 5 ms slot, non-blocking sockets with add_writer/add_reader
callbacks, httptools for the response, a reset on close (as vmhealth does), and a
counter. No probe state, no results, no timeouts, no metrics. What this costs is what
the kernel and the event loop charge for the connections themselves, so the real
probes' CPU divided by this is vmhealth's own overhead factor.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct

import httptools

RESET_ON_CLOSE = struct.pack("ii", 1, 0)
REQUEST = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: floor\r\n"
           b"Accept: */*\r\nConnection: close\r\n\r\n")
SLOT = 0.005


class Connection:
    """Connect; with a request, send it and read the response; count the outcome."""

    __slots__ = ("loop", "sock", "fd", "request", "parser", "complete", "tally", "kind")

    def __init__(self, loop, port: int, request: bytes | None, tally, kind: str) -> None:
        self.loop, self.request, self.tally, self.kind = loop, request, tally, kind
        self.complete = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.fd = self.sock.fileno()
        code = self.sock.connect_ex(("127.0.0.1", port))
        if code in (0, errno.EINPROGRESS):
            loop.add_writer(self.fd, self.writable)
        else:
            self.finish(False)

    def writable(self) -> None:
        self.loop.remove_writer(self.fd)
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.finish(False)
        elif self.request is None:
            self.finish(True)
        else:
            self.sock.send(self.request)
            self.parser = httptools.HttpResponseParser(self)
            self.loop.add_reader(self.fd, self.readable)

    def readable(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.parser.feed_data(data)
        if self.complete or not data:
            self.loop.remove_reader(self.fd)
            self.finish(self.complete and 200 <= self.parser.get_status_code() < 400)

    def on_message_complete(self) -> None:
        self.complete = True

    def finish(self, success: bool) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        self.sock.close()
        if self.tally.measuring:
            key = f"{self.kind}:{'success' if success else 'failure'}"
            self.tally.outcomes[key] = self.tally.outcomes.get(key, 0) + 1


class FloorProbing:
    def __init__(self, ports: list[int], domains: int, tally) -> None:
        self.tally = tally
        self.slots: dict[int, list[int]] = {}
        self.ports = [ports[i % len(ports)] for i in range(domains)]
        per_second = round(1 / SLOT)
        for domain in range(domains):
            self.slots.setdefault(random.randrange(per_second), []).append(domain)  # noqa: S311
        self.per_second = per_second
        self.handle = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self.handle = loop.call_at(self.t0, self.tick, 0)

    def tick(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        if self.tally.measuring:
            self.tally.lateness.append(loop.time() - (self.t0 + slot * SLOT))
        for domain in self.slots.get(slot % self.per_second, ()):
            Connection(loop, self.ports[domain], REQUEST, self.tally, "readiness")
            Connection(loop, self.ports[domain], None, self.tally, "liveness")
        self.handle = loop.call_at(self.t0 + (slot + 1) * SLOT, self.tick, slot + 1)

    async def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        await asyncio.sleep(0.2)  # let connections in flight finish
