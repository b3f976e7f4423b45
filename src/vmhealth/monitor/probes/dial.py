"""Plain (non-TLS) probe connections driven by event-loop callbacks.

Why not `loop.create_connection` plus `asyncio.timeout`: at 2,000 probes a second the
daemon's CPU per connection decides whether it fits its budget, and a transport, a
protocol and a timeout context per probe cost about twice what a non-blocking socket
with `add_writer`/`add_reader` callbacks and one timer costs (docs/probes.md has the
measurement). TLS (scheme HTTPS) keeps asyncio's transports: it is rare and its
handshake dwarfs the rest.

One `Dial` is one attempt at one address: connect, then optionally send one request
and hand every received byte to a `sink` until it says it has read enough or the peer
closes. Its future resolves to None, or fails with OSError (refused, unreachable...)
or TimeoutError at the absolute `deadline` (loop time, on the 5 ms grid of
coarse_timers.py): the caller passes the same deadline to every attempt of a probe,
so the whole probe stays within timeoutSeconds.

Connections end with a reset (SO_LINGER 0), as HAProxy's health checks do: once a
probe has its answer nothing is left to deliver, and an orderly close by the host
would leave one TIME_WAIT socket per TCP probe on the host for 60 seconds (at 1,000
TCP probes a second, 60,000 of them).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from typing import Protocol

from vmhealth.monitor import coarse_timers

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}
_READ_SIZE = 64 * 1024
_CONNECTING = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)


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
    """One connection attempt; await `.done`. Always closes its socket, on every path."""

    __slots__ = ("_loop", "_sock", "_fd", "_request", "_sink", "_watching", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, address: tuple,
                 deadline: float, request: bytes | None = None, sink: Sink | None = None,
                 ) -> None:
        self._loop = loop
        self._request = request
        self._sink = sink
        self._watching = 0  # 1 = writer registered, 2 = reader registered
        self.done = loop.create_future()
        self._sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self._fd = self._sock.fileno()
        coarse_timers.SHARED.call_at(loop, deadline, self._expire)
        code = self._sock.connect_ex(address)
        if code == 0:
            self._connected()
        elif code in _CONNECTING:
            self._watching = 1
            loop.add_writer(self._fd, self._on_writable)
        else:
            self._end(_os_error(code))

    def abort(self) -> None:
        """Give up (the awaiting task was cancelled): close now, resolve nothing."""
        if not self.done.done():
            self.done.cancel()
        self._close()

    # -- loop callbacks -----------------------------------------------------------------
    def _on_writable(self) -> None:
        self._unwatch()
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._end(_os_error(code))
        else:
            self._connected()

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
        self._watching = 2
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
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
        self._close()
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)

    def _unwatch(self) -> None:
        if self._watching == 1:
            self._loop.remove_writer(self._fd)
        elif self._watching == 2:
            self._loop.remove_reader(self._fd)
        self._watching = 0

    def _close(self) -> None:
        if self._sock is None:
            return
        self._unwatch()
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        except OSError:
            pass  # not connected (refused, say): nothing to reset
        self._sock.close()
        self._sock = None


async def dial(loop: asyncio.AbstractEventLoop, family: int, address: tuple, deadline: float,
               request: bytes | None = None, sink: Sink | None = None) -> None:
    """Run one Dial to its end; a cancelled caller closes the connection at once."""
    attempt = Dial(loop, family, address, deadline, request, sink)
    try:
        await attempt.done
    except asyncio.CancelledError:
        attempt.abort()
        raise


def _os_error(code: int) -> OSError:
    # OSError(errno, ...) builds the matching subclass (ConnectionRefusedError, ...).
    return OSError(code, os.strerror(code))
