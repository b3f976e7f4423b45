"""The read-only web listener: what may face the network (`[api] tcp_listen`).

GET /metrics         Prometheus text format (rendered at most once a second)
GET /ready/<domain>  200 "ready" or 503 with the reason: for load balancers
GET /healthz         200 "ok" while the daemon answers

Nothing else: no status, no events, nothing that makes the daemon act (POST /probe
stays on the unix socket, where the kernel says who calls); other methods get 405,
other paths 404. TLS and basic authentication come from a web.config.yml
(monitor/webconfig.py); with users configured every request, an unknown path too,
needs them (401 otherwise).

Nobody on the network can stall a scrape, nor the daemon:
- aiohttp's parser bounds a request head (request line, field size, field count);
  a larger one gets 400 and the connection closes;
- every connection has one deadline (`_Connection`): its request head must be
  complete within `head_timeout` of the connection or of its first byte (slowloris),
  an idle keep-alive connection and a response nobody reads last `idle_timeout`;
- connections are capped in all and per client address, so one client holding
  every slot it may get leaves room for the others; a connection beyond a cap is
  closed at once; with TLS a connection is counted from its accept, before the
  handshake (which has `head_timeout`), so handshakes that never finish cannot
  hold more than the caps either;
- bcrypt (~70 ms at cost 10) runs in a thread of its own, never on the daemon's
  loop; credentials that passed once are remembered (as an HMAC under a key of this
  process, never in clear), so a scraper pays for bcrypt once; at most
  `AUTH_PENDING_LIMIT` checks wait, more get 429.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import math
import os
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from vmhealth.monitor.api import StatusSource, metrics_response, ready_response
from vmhealth.monitor.webconfig import WebConfig

log = logging.getLogger("vmhealth.web")

METRICS_MAX_AGE = 1.0  # seconds a rendered /metrics page serves every scraper
AUTH_PENDING_LIMIT = 8  # bcrypt checks running or waiting; beyond: 429
VERIFIED_LIMIT = 64  # remembered credentials (a handful of scrapers in practice)
REALM = 'Basic realm="vmhealth"'
REPORT_INTERVAL = 60.0  # seconds between two log lines about refused requests
EARLY_LIMIT = 65536  # bytes held between the TLS handshake and the protocol's start


class _RefusedRequests(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback quoting the bytes
    it refused: a client's header values in the daemon's log, as often as a client
    likes. Such a record becomes one line without the bytes, at most once a minute,
    counting the others; any other error (ours) passes as it is."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last = -math.inf
        self._unreported = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = self._clock()
        if now - self._last < REPORT_INTERVAL:
            self._unreported += 1
            return False
        record.msg = ("web listener: refused a malformed request (HTTP %s); %d more since "
                      "the last such line")
        record.args = (error.code, self._unreported)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._last, self._unreported = now, 0
        return True


requests_log = logging.getLogger("vmhealth.web.requests")
requests_log.addFilter(_RefusedRequests())


@dataclass(frozen=True)
class Limits:
    head_timeout: float = 10.0  # seconds for a whole request head
    idle_timeout: float = 60.0  # seconds a keep-alive connection may wait, or a write stall
    max_connections: int = 256
    max_per_address: int = 64  # a load balancer checking many domains at once fits
    max_line_size: int = 4096  # request line: /ready/<domain> with any domain name
    max_field_size: int = 4096  # one header line
    max_headers: int = 32  # header lines


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a deadline of its own.

    aiohttp bounds the size of a request but not the time it takes to arrive. The
    deadline runs from the connection (or from the first byte of the next request) to
    the moment its handler starts; after a response, from then to the next request.
    When it passes, the connection is aborted (not closed: a close waits for a client
    that does not read)."""

    def __init__(self, listener: WebListener) -> None:
        self._listener = listener
        self._inner: Any = None  # aiohttp's RequestHandler once admitted
        self.transport: Any = None
        self.address = ""
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a handler runs
        self._head = True  # bytes of a request are awaited or arriving
        self._admitted = False
        self.handshake: asyncio.Task[None] | None = None
        # Bytes (and an end of stream) that arrive between the end of the TLS handshake
        # and connection_made with the TLS transport: asyncio delivers the request that
        # came with the handshake's last flight before start_tls returns.
        self._early: list[bytes] = []
        self._early_eof = False
        self._lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if not self._admitted:
            peer = transport.get_extra_info("peername")
            self.address = str(peer[0]) if peer else ""
            if not self._listener.admit(self):
                transport.abort()
                return
            self._admitted = True
            context = self._listener.web_config.ssl_context
            if context is not None:
                # Counted now, on the plain socket; TLS comes next (start_tls calls
                # connection_made again with the TLS transport once the handshake is
                # done). Paused so that no byte of the ClientHello reaches this
                # protocol before start_tls takes the transport over.
                transport.pause_reading()
                self.handshake = asyncio.get_running_loop().create_task(
                    self._start_tls(transport, context))
                return
        self._inner = self._listener.protocol()
        self._inner.connection_made(transport)
        self._arm(self._listener.limits.head_timeout)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._early_eof:
            self._inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            if self._admitted:  # TLS is up, connection_made is on its way
                self._early.append(data)
                if sum(map(len, self._early)) > EARLY_LIMIT:
                    self.transport.abort()
            return
        if not self._head:
            self._head = True
            if not self._busy:
                self._arm(self._listener.limits.head_timeout)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            self._early_eof = self._admitted
            return True if self._admitted else None  # half-open: the answer may follow
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    async def _start_tls(self, transport: Any, context: Any) -> None:
        try:
            secure = await asyncio.get_running_loop().start_tls(
                transport, self, context, server_side=True,
                ssl_handshake_timeout=self._listener.limits.head_timeout)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
            # A failed, stalled or aborted handshake: asyncio closed the socket, and
            # never calls connection_lost here, so the slot is given back here.
            transport.abort()
            self._listener.release(self)
            return
        finally:
            self.handshake = None
        if self._lost:  # lost between the handshake and now (EARLY_LIMIT, a reset)
            return
        self.connection_made(secure)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel()
        self._listener.release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self._busy, self._head = True, False
        self._cancel()

    def request_finished(self) -> None:
        self._busy = False
        limits = self._listener.limits
        self._arm(limits.head_timeout if self._head else limits.idle_timeout)

    def _arm(self, seconds: float) -> None:
        self._cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.transport.abort)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class BasicAuth:
    """Basic authentication against bcrypt hashes, off the event loop."""

    def __init__(self, users: dict[str, bytes],
                 pending_limit: int = AUTH_PENDING_LIMIT) -> None:
        import bcrypt  # the listener's alone; the rest of the daemon does without

        self._checkpw = bcrypt.checkpw
        self.users = users
        # An unknown user costs a bcrypt too, so timing does not tell which users exist.
        self._decoy = next(iter(users.values()), b"")
        self._pending_limit = pending_limit
        self._pending = 0
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vmhealth-bcrypt")

    async def check(self, header: str | None) -> str:
        """"ok", "denied" or "busy" for an Authorization header."""
        credentials = _basic_credentials(header)
        if credentials is None:
            return "denied"
        raw, user, password = credentials
        seen = hmac.digest(self._key, raw, "sha256")
        if seen in self._verified:
            return "ok"
        if self._pending >= self._pending_limit:
            return "busy"
        self._pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._bcrypt, user, password)
        finally:
            self._pending -= 1
        if not ok:
            return "denied"
        if len(self._verified) >= VERIFIED_LIMIT:
            self._verified.clear()
        self._verified.add(seen)
        return "ok"

    def _bcrypt(self, user: str, password: bytes) -> bool:
        hashed = self.users.get(user)
        try:
            match = self._checkpw(password, hashed or self._decoy)
        except ValueError:  # a NUL byte, or a bcrypt that refuses >72 bytes
            match = False
        return match and hashed is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _basic_credentials(header: str | None) -> tuple[bytes, str, bytes] | None:
    """(user:password as sent, user, password), or None if it is not Basic."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        name = user.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return (raw, name, password) if sep else None


class WebListener:
    """The listener on one TCP address; start() and stop() from the daemon's loop."""

    def __init__(self, source: StatusSource, host: str, port: int,
                 web_config: WebConfig | None = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.host, self.port = host, port
        self.web_config = web_config or WebConfig()
        self.limits = limits or Limits()
        self._clock = clock
        self.auth = BasicAuth(self.web_config.users) if self.web_config.users else None
        self._connections: dict[int, _Connection] = {}  # id -> admitted connection
        self._per_address: dict[str, int] = {}
        self.refused = 0  # connections closed at once for a cap, for the tests
        self._page: tuple[float, bytes] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._runner = web.AppRunner(
            self._app(), handle_signals=False, access_log=None, logger=requests_log,
            max_line_size=self.limits.max_line_size,
            max_field_size=self.limits.max_field_size, max_headers=self.limits.max_headers,
            keepalive_timeout=self.limits.idle_timeout, lingering_time=1.0)

    @property
    def scheme(self) -> str:
        return "https" if self.web_config.ssl_context is not None else "http"

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ready/{domain}", self._ready)
        app.router.add_get("/healthz", self._healthz)
        app.on_response_prepare.append(self._add_headers)
        return app

    async def start(self) -> None:
        await self._runner.setup()
        # No ssl= here: each connection is admitted (counted against the caps) first
        # and upgraded to TLS after (_Connection.connection_made).
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one chosen
        self._warn_if_exposed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections.values()):
            if connection.handshake is not None:
                connection.handshake.cancel()
            connection.transport.abort()
        await self._runner.cleanup()
        if self.auth is not None:
            self.auth.close()

    def _warn_if_exposed(self) -> None:
        if self.auth is not None and self.web_config.ssl_context is None:
            log.warning("web listener: basic_auth_users without tls_server_config: "
                        "passwords cross the network in clear")
        elif self.auth is None and not ipaddress.ip_address(self.host).is_loopback:
            log.warning("web listener on a routable address without authentication: "
                        "anyone who reaches it reads /metrics and /ready (docs/prometheus.md)")

    # --- connections ---------------------------------------------------------------

    def protocol(self) -> Any:
        server = self._runner.server
        assert server is not None, "start() first"
        return server()

    def admit(self, connection: _Connection) -> bool:
        held = self._per_address.get(connection.address, 0)
        if (len(self._connections) >= self.limits.max_connections
                or held >= self.limits.max_per_address):
            self.refused += 1
            return False
        self._connections[id(connection)] = connection
        self._per_address[connection.address] = held + 1
        return True

    def release(self, connection: _Connection) -> None:
        if self._connections.pop(id(connection), None) is None:
            return  # never admitted, or released already
        left = self._per_address[connection.address] - 1
        if left:
            self._per_address[connection.address] = left
        else:
            del self._per_address[connection.address]

    @property
    def connections(self) -> int:
        return len(self._connections)

    # --- requests --------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        connection = self._connections.get(request.transport)
        if connection is not None:
            connection.request_started()
        try:
            refusal = await self._refusal(request)
            return refusal if refusal is not None else await handler(request)
        finally:
            if connection is not None:
                connection.request_finished()

    async def _refusal(self, request: web.Request) -> web.Response | None:
        if self.auth is None:
            return None
        verdict = await self.auth.check(request.headers.get("Authorization"))
        if verdict == "ok":
            return None
        if verdict == "busy":
            return web.Response(status=429, text="too many password checks at once; retry\n",
                                headers={"Retry-After": "1"})
        return web.Response(status=401, text="authentication required\n",
                            headers={"WWW-Authenticate": REALM})

    async def _add_headers(self, _request: web.Request,
                           response: web.StreamResponse) -> None:
        response.headers.update(self.web_config.headers)

    async def _metrics(self, _request: web.Request) -> web.Response:
        now = self._clock()
        if self._page is None or now - self._page[0] >= METRICS_MAX_AGE:
            self._page = (now, self.source.metrics.render())
        return metrics_response(self._page[1])

    async def _ready(self, request: web.Request) -> web.Response:
        return ready_response(self.source, request.match_info["domain"])

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


def web_listener(source: StatusSource, address: tuple[str, int],
                 web_config_file: str = "") -> WebListener:
    """The daemon's listener from its configuration ([api] tcp_listen, web_config_file)."""
    from vmhealth.monitor.webconfig import load_web_config

    web_config = load_web_config(web_config_file) if web_config_file else WebConfig()
    return WebListener(source, *address, web_config=web_config)
