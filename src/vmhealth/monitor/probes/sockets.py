"""The sockets of plain probe connections: one edge-triggered epoll, and reuse between probes.

At 2,000 probe connections a second, what the event loop's own readiness callbacks
cost per connection is most of the daemon's CPU (docs/probes.md has the figures), so
plain TCP and HTTP probes get their sockets from here instead:

- Registered once. Every socket joins this module's epoll once, edge-triggered for
  input, output, peer hang-up and errors, and stays in it for its whole life; the
  event loop watches only the epoll's own descriptor. With `add_writer`/`add_reader`
  the loop's selector adds and removes a registration (a syscall, and a selector key
  in Python) for every wait of every connection.
- Reused. A finished connection is dissolved with connect(AF_UNSPEC) - connect(2):
  TCP sockets "may dissolve the association by connecting to an address with the
  sa_family member of sockaddr set to AF_UNSPEC; thereafter, the socket can be
  connected to another address" - which sends a reset exactly as SO_LINGER 0 + close
  would (see dial.py for why probes end with a reset), then the socket waits in a
  small idle list for the next probe: no socket(), close() or epoll registration per
  probe. Where that call is unavailable a socket is closed with a reset instead.

Edge-triggered rules the owner of a socket follows (dial.Dial does): it is told the
event mask when the socket's state changes, and reads until EAGAIN. A mask always
describes the socket as it is now, never a previous owner's connection: epoll polls
the socket again when it hands an event out (a reused socket that is still
connecting reports nothing), and a socket given back during a dispatch round is not
handed out again until that round is over.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import select
import socket
import struct
from typing import Callable

log = logging.getLogger(__name__)

WATCHED = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
IDLE_PER_FAMILY = 64  # idle sockets kept for reuse; more than that are closed
_BATCH = 256
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}


def _load_dissolve() -> Callable[[int], bool] | None:
    """connect(fd, {AF_UNSPEC}) through libc: True when the socket can be reused."""
    try:
        connect = ctypes.CDLL(None, use_errno=True).connect
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol table
        return None
    connect.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
    connect.restype = ctypes.c_int
    unspecified = ctypes.create_string_buffer(16)  # a zeroed sockaddr: sa_family 0

    def dissolve(fd: int) -> bool:
        return connect(fd, unspecified, 16) == 0

    return dissolve


_dissolve = _load_dissolve()


def _open(family: int) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)


def close_with_reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:
        pass  # never connected (refused, say): nothing to reset
    sock.close()


class ProbeSockets:
    """Non-blocking TCP sockets for one event loop, watched by one edge-triggered epoll."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: select.epoll | None = select.epoll()
        self._owners: dict[int, Callable[[int], None]] = {}
        self._idle: dict[int, list[socket.socket]] = {socket.AF_INET: [],
                                                      socket.AF_INET6: []}
        self._dispatching = False
        self._given_back: list[tuple[int, socket.socket]] = []
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def take(self, family: int, on_event: Callable[[int], None]) -> socket.socket:
        """A socket ready to connect; `on_event(mask)` hears of it until `give_back`.

        Raises OSError when the host cannot open one (out of file descriptors, say).
        """
        idle = self._idle.get(family)
        if idle:
            sock = idle.pop()
        else:
            if self._epoll is None:
                raise OSError("the probe sockets of this event loop are closed")
            sock = _open(family)
            try:
                self._epoll.register(sock.fileno(), WATCHED)
            except BaseException:
                sock.close()
                raise
        self._owners[sock.fileno()] = on_event
        return sock

    def give_back(self, family: int, sock: socket.socket) -> None:
        """End the socket's connection with a reset and keep the socket for reuse."""
        fd = sock.fileno()
        self._owners.pop(fd, None)
        idle = self._idle.get(family)
        if (self._epoll is None or _dissolve is None or idle is None
                or len(idle) + len(self._given_back) >= IDLE_PER_FAMILY
                or not _dissolve(fd)):
            close_with_reset(sock)
        elif self._dispatching:
            self._given_back.append((family, sock))
        else:
            idle.append(sock)

    def close(self) -> None:
        """Stop watching and close the idle sockets (sockets in use close on give_back)."""
        if self._epoll is None:
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._epoll = None
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
            idle.clear()

    def _dispatch(self) -> None:
        epoll, owners = self._epoll, self._owners
        if epoll is None:
            return
        self._dispatching = True
        try:
            # One batch per loop turn: what is left stays ready in the epoll, whose
            # descriptor stays readable, so the loop calls again on its next turn.
            # Each owner's work is bounded (dial.py reads at most a slice), and so is
            # a batch's: a thousand guests flooding at once cannot hold the loop for
            # all of them in one callback.
            for fd, events in epoll.poll(0, _BATCH):
                owner = owners.get(fd)
                if owner is None:
                    continue  # an idle socket hearing of its own reset
                try:
                    owner(events)
                except Exception:  # noqa: BLE001 - one bug must not starve the rest
                    log.exception("probe connection handler failed")
        finally:
            self._dispatching = False
            for family, sock in self._given_back:
                self._idle[family].append(sock)
            self._given_back.clear()


_current: ProbeSockets | None = None


def for_loop(loop: asyncio.AbstractEventLoop) -> ProbeSockets:
    """The ProbeSockets of `loop` (one loop at a time: a new loop replaces the old one's)."""
    global _current
    if _current is None or _current.loop is not loop:
        if _current is not None:
            _current.close()
        _current = ProbeSockets(loop)
    return _current
