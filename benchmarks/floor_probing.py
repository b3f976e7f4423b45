"""The floor for bench_probes.py: the same connections with no vmhealth code at all.

1,000 HTTP GETs and 1,000 TCP connects a second to the loopback targets, each domain
at its own random offset within the second, made by the leanest code known here: one
timer per 5 ms slot; non-blocking sockets in one edge-triggered epoll (watched by the
event loop), each registered once and reused after connect(AF_UNSPEC) resets its
connection; httptools for the response; a counter. No probe state, no results, no
timeouts, no metrics. What this costs is what the kernel and the event loop charge
for the connections themselves, so the real probes' CPU divided by this is vmhealth's
own overhead factor. Written independently of vmhealth's sockets.py on purpose: the
floor must not inherit the product's inefficiencies.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import random
import select
import socket

import httptools

REQUEST = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: floor\r\n"
           b"Accept: */*\r\nConnection: close\r\n\r\n")
SLOT = 0.005
WATCHED = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
BROKEN = select.EPOLLERR | select.EPOLLHUP
_connect = ctypes.CDLL(None, use_errno=True).connect
_connect.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_UNSPECIFIED = ctypes.create_string_buffer(16)


class Sockets:
    """One edge-triggered epoll; idle sockets reused (see the module docstring)."""

    def __init__(self, loop) -> None:
        self.epoll = select.epoll()
        self.owners: dict = {}
        self.idle: list = []
        loop.add_reader(self.epoll.fileno(), self.dispatch)
        self.loop = loop

    def dispatch(self) -> None:
        owners = self.owners
        for fd, events in self.epoll.poll(0, 1024):
            owner = owners.get(fd)
            if owner is not None:
                owner.event(events)

    def take(self, owner) -> socket.socket:
        if self.idle:
            sock = self.idle.pop()
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            self.epoll.register(sock.fileno(), WATCHED)
        self.owners[sock.fileno()] = owner
        return sock

    def give_back(self, sock: socket.socket) -> None:
        del self.owners[sock.fileno()]
        _connect(sock.fileno(), _UNSPECIFIED, 16)  # reset the connection, keep the socket
        self.loop.call_soon(self.idle.append, sock)  # not within this dispatch round

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        for sock in self.idle:
            sock.close()
        self.epoll.close()


class Connection:
    """Connect; with a request, send it and read the response; count the outcome."""

    __slots__ = ("sockets", "sock", "request", "parser", "complete", "tally", "kind",
                 "answering")

    def __init__(self, sockets: Sockets, port: int, request: bytes | None, tally,
                 kind: str) -> None:
        self.sockets, self.request, self.tally, self.kind = sockets, request, tally, kind
        self.complete = self.answering = False
        self.sock = sockets.take(self)
        if self.sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            self.finish(False)

    def event(self, events: int) -> None:
        if not self.answering:
            if events & BROKEN:
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self.finish(False)
                return
            if self.request is None:
                self.finish(True)
                return
            self.sock.send(self.request)
            self.parser = httptools.HttpResponseParser(self)
            self.answering = True
            if not events & select.EPOLLIN:
                return
        data = self.sock.recv(65536)
        if data:
            self.parser.feed_data(data)
        if self.complete or not data:
            self.finish(self.complete and 200 <= self.parser.get_status_code() < 400)

    def on_message_complete(self) -> None:
        self.complete = True

    def finish(self, success: bool) -> None:
        self.sockets.give_back(self.sock)
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
        self.sockets: Sockets | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self.sockets = Sockets(loop)
        self.handle = loop.call_at(self.t0, self.tick, 0)

    def tick(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        for domain in self.slots.get(slot % self.per_second, ()):
            Connection(self.sockets, self.ports[domain], REQUEST, self.tally, "readiness")
            Connection(self.sockets, self.ports[domain], None, self.tally, "liveness")
        self.handle = loop.call_at(self.t0 + (slot + 1) * SLOT, self.tick, slot + 1)

    async def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        await asyncio.sleep(0.2)  # let connections in flight finish
        self.sockets.close()
