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
closes. It calls `on_end(error)` once: None, an OSError (refused, unreachable...) or
TimeoutError at the absolute `deadline` (loop time, on the 5 ms grid of
coarse_timers.py); the caller passes the same deadline to every attempt of a probe,
so the whole probe stays within timeoutSeconds. `on_end` is only ever called from the
event loop, never from the constructor: what fails at once is raised there instead. A
host out of sockets (EMFILE, ENFILE, ENOBUFS, ENOMEM) raises HostSocketError: that
says nothing about the guest. Other immediate errors (no IPv6 on this host, no route)
are raised as OSError, like a refused address: the caller moves on to the next one.

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
from typing import Callable, Protocol

from vmhealth.monitor import coarse_timers
from vmhealth.monitor.probes import sockets

_READ_SIZE = 64 * 1024
# What one callback reads at most before the event loop gets a turn; the rest is read
# on the next turn. A guest that sends faster than the host parses would otherwise
# hold the loop - and every other probe, and this probe's own deadline - for as long
# as it keeps the socket full. A probe answer's head and body fit in one slice.
_READ_SLICE = 64 * 1024
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
    family = _literal_families.get(host)
    if family is None:
        family = _literal_family(host)
        if len(_literal_families) >= 4096:  # guests' addresses come and go: stay bounded
            _literal_families.clear()
        _literal_families[host] = family
    if family == socket.AF_INET:
        return family, (host, port)
    if family == socket.AF_INET6:
        return family, (host, port, 0, 0)
    return None


_literal_families: dict[str, int] = {}  # host -> AF_INET, AF_INET6, or 0 for a name


def _literal_family(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        return 0
    return family


class Dial:
    """One connection attempt, reporting to `on_end`. Always gives its socket back."""

    __slots__ = ("_sockets", "_family", "_sock", "_request", "_sink", "_answering", "_on_end",
                 "_deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, address: tuple,
                 deadline: float, on_end: Callable[[BaseException | None], None],
                 request: bytes | None = None, sink: Sink | None = None) -> None:
        self._request = request
        self._sink = sink
        self._answering = False  # connected, request sent: reading the answer
        self._on_end: Callable[[BaseException | None], None] | None = on_end
        self._family = family
        self._deadline = deadline
        self._sockets = sockets.for_loop(loop)
        try:
            self._sock: socket.socket | None = self._sockets.take(family, self._on_event)
        except OSError as exc:
            raise_if_host_exhausted(exc)
            raise  # e.g. no IPv6 on this host: that address cannot be tried, others can
        # A connect that completes at once (0) is left to the socket's writable edge in
        # the epoll like EINPROGRESS, so the constructor never reports an end itself.
        code = self._sock.connect_ex(address)
        if code != 0 and code not in _CONNECTING:
            self.abort()
            raise _os_error(code)
        coarse_timers.SHARED.call_at(loop, deadline, self._expire)

    def abort(self) -> None:
        """Give up (the probe was cancelled): reset now, report nothing."""
        self._on_end = None
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
        # Edge-triggered: read until EAGAIN or the end, in slices (see _READ_SLICE), with
        # the deadline checked between reads (its timer cannot run while this does).
        left, clock = _READ_SLICE, self._sockets.loop.time
        while self._sock is not None:
            if clock() >= self._deadline:
                self._end(TimeoutError())
                return
            if left <= 0:
                # Data may be left unread, and epoll will not report it again: come back.
                self._sockets.loop.call_soon(self._read_rest)
                return
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
            left -= len(data)
            try:
                finished = self._sink.feed(data)
            except Exception as exc:  # noqa: BLE001 - the sink's verdict on the answer
                self._end(exc)
                return
            if finished:
                self._end(None)
                return

    def _read_rest(self) -> None:
        if self._sock is not None:  # not ended (nor its socket given back) meanwhile
            self._read()

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
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(error)

    def _give_back(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self._sockets.give_back(self._family, sock)


def _os_error(code: int) -> OSError:
    # OSError(errno, ...) builds the matching subclass (ConnectionRefusedError, ...).
    return OSError(code, os.strerror(code))
