"""Plain (non-TLS) probe connections driven by callbacks from sockets.py's epoll.

Why not `loop.create_connection` plus `asyncio.timeout`: at 2,000 probes a second the
daemon's CPU per connection decides whether it fits its budget, and a transport, a
protocol and a timeout context per probe cost about twice what a non-blocking socket
with readiness callbacks and one timer costs; the loop's own `add_writer`/`add_reader`
cost more again than sockets.py's edge-triggered epoll and reused sockets
(docs/probes.md has the measurements). TLS (scheme HTTPS) keeps asyncio's
transports: it is rare and its handshake dwarfs the rest.

One `Dial` is one attempt at one address: connect, then optionally send one request
and hand every received byte to a `sink` until it says it has read enough or the peer
closes. Its future resolves to None, or fails with OSError (refused, unreachable...)
or TimeoutError at the absolute `deadline` (loop time, on the 5 ms grid of
coarse_timers.py): the caller passes the same deadline to every attempt of a probe,
so the whole probe stays within timeoutSeconds. A host out of sockets (EMFILE,
ENFILE, ENOBUFS, ENOMEM) raises HostSocketError from the constructor: that says
nothing about the guest. Other socket() errors (no IPv6 on this host, say) are
raised as they are, like a refused address: the caller moves on to the next one.

Connections end with a reset, as HAProxy's health checks do: once a probe has its
answer nothing is left to deliver, and an orderly close by the host would leave one
TIME_WAIT socket per TCP probe on the host for 60 seconds (at 1,000 TCP probes a
second, 60,000 of them).
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
from typing import Protocol

from vmhealth.monitor import coarse_timers
from vmhealth.monitor.probes import sockets

_READ_SIZE = 64 * 1024
_CONNECTING = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
_BROKEN = select.EPOLLERR | select.EPOLLHUP
_ANSWER = select.EPOLLIN | select.EPOLLRDHUP | _BROKEN
# socket() failures that mean the host ran out of something, not that the address is bad.
_HOST_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class HostSocketError(Exception):
    """The host could not open a socket (out of file descriptors, say): not the guest's fault."""


def raise_if_host_exhausted(exc: OSError) -> None:
    """HostSocketError when `exc` means the host ran out of sockets (any transport)."""
    if exc.errno in _HOST_EXHAUSTED:
        raise HostSocketError(f"cannot open a socket on the host: "
                              f"{exc.strerror or exc}") from None


class Sink(Protocol):
    def feed(self, data: bytes) -> bool:
        """Take received bytes; True when nothing more needs reading (may raise)."""

    def end_of_stream(self) -> None:
        """The peer closed its side; raise if the answer is incomplete."""


def sockaddr(host: str, port: int) -> tuple[int, tuple] | None:
    """(family, address) for an IP literal, None for a host name (needs resolving)."""
    if ":" in host:
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            return None
        return socket.AF_INET6, (host, port, 0, 0)
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return None
    return socket.AF_INET, (host, port)


class Dial:
    """One connection attempt; await `.done`. Always gives its socket back, on every path."""

    __slots__ = ("_sockets", "_family", "_sock", "_request", "_sink", "_answering", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, address: tuple,
                 deadline: float, request: bytes | None = None, sink: Sink | None = None,
                 ) -> None:
        self._request = request
        self._sink = sink
        self._answering = False  # connected, request sent: reading the answer
        self.done = loop.create_future()
        self._family = family
        self._sockets = sockets.for_loop(loop)
        try:
            self._sock: socket.socket | None = self._sockets.take(family, self._on_event)
        except OSError as exc:
            raise_if_host_exhausted(exc)
            raise  # e.g. no IPv6 on this host: that address cannot be tried, others can
        coarse_timers.SHARED.call_at(loop, deadline, self._expire)
        code = self._sock.connect_ex(address)
        if code == 0:
            self._connected()
        elif code not in _CONNECTING:
            self._end(_os_error(code))

    def abort(self) -> None:
        """Give up (the awaiting task was cancelled): reset now, resolve nothing."""
        if not self.done.done():
            self.done.cancel()
        self._give_back()

    # -- epoll events (edge-triggered: see sockets.py) ---------------------------------
    def _on_event(self, events: int) -> None:
        if not self._answering:
            if events & _BROKEN:  # refused, unreachable, or reset before we looked
                code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._end(_os_error(code or errno.ECONNABORTED))
                return
            if not events & select.EPOLLOUT:
                return  # still connecting
            self._connected()
            if not self._answering:
                return
        if events & _ANSWER:
            self._read()

    def _connected(self) -> None:
        if self._request is None:
            self._end(None)
            return
        try:
            sent = self._sock.send(self._request)
        except OSError as exc:
            self._end(exc)
            return
        if sent != len(self._request):
            # A probe request is a few hundred bytes and a new socket's send buffer is
            # far larger; a short write means something is badly wrong on this host.
            self._end(OSError(errno.EMSGSIZE, "the request did not fit the send buffer"))
            return
        self._answering = True

    def _read(self) -> None:
        while self._sock is not None:  # edge-triggered: read until EAGAIN or the end
            try:
                data = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # a reset: fine if it ends an EOF-delimited answer
                self._end_of_stream(exc)
                return
            if not data:
                self._end_of_stream(None)
                return
            try:
                finished = self._sink.feed(data)
            except Exception as exc:  # noqa: BLE001 - the sink's verdict on the answer
                self._end(exc)
                return
            if finished:
                self._end(None)
                return

    def _end_of_stream(self, error: OSError | None) -> None:
        try:
            self._sink.end_of_stream()
        except Exception as verdict:  # noqa: BLE001 - the answer is incomplete
            self._end(error or verdict)
            return
        self._end(None)

    def _expire(self) -> None:
        if self._sock is not None:  # still going at the deadline
            self._end(TimeoutError())

    # -- ending -------------------------------------------------------------------------
    def _end(self, error: BaseException | None) -> None:
        self._give_back()
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)

    def _give_back(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self._sockets.give_back(self._family, sock)


def _os_error(code: int) -> OSError:
    # OSError(errno, ...) builds the matching subclass (ConnectionRefusedError, ...).
    return OSError(code, os.strerror(code))
