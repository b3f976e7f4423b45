"""The daemon's HTTP API (aiohttp) on its unix socket.

TCP is the read-only web listener's (monitor/web_listener.py: /metrics, /ready and
/healthz for Prometheus and load balancers, with TLS and basic authentication).

GET  /status                  every monitored domain (JSON)
GET  /status/<domain>         one domain, by name or UUID (404 when not monitored)
GET  /ready/<domain>          200 "ready" or 503 with the reason: for load balancers
GET  /events[?follow=1&since=SEQ&domain=NAME]
                              events as newline-delimited JSON; follow keeps streaming
GET  /metrics                 Prometheus text format
POST /probe/<domain>/<kind>   run one probe now (kind: liveness, readiness, startup)

Reading is for whoever can reach the socket (mode 0660, group `socket_group`).
Running a probe makes the daemon act on a guest (an exec probe starts a process in
it), so POST /probe is for root, the daemon's own user and members of `probe_group`
only, as the kernel vouches for the caller (SO_PEERCRED on the unix socket). And one
request cannot become a
hundred runs: OnDemandProbes runs one probe of a (domain, kind) at a time (requests
that arrive meanwhile share its result) and starts the next no sooner than
ON_DEMAND_INTERVAL after the last one ended (429 with Retry-After until then).
"""

from __future__ import annotations

import asyncio
import grp
import json
import math
import os
import socket
import struct
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aiohttp import web

from vmhealth.excerpt import excerpt
from vmhealth.monitor.events import MESSAGE_LIMIT, EventLog
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.metrics import CONTENT_TYPE, Metrics
from vmhealth.spec import ProbeKind

HEARTBEAT_SECONDS = 15.0  # an empty line now and then, so a dead client is noticed
PROBE_KINDS = {kind.short: kind for kind in ProbeKind}
# Rest for a guest between two runs of the same probe on demand (end to next start).
ON_DEMAND_INTERVAL = 1.0
# Linux's SO_PEERGROUPS (asm-generic/socket.h); Python's socket module lacks the name.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
NGROUPS_MAX = 65536


class StatusSource(Protocol):
    events: EventLog
    metrics: Metrics

    def status(self) -> dict[str, Any]: ...

    def domain_status(self, key: str) -> dict[str, Any]: ...  # raises LookupError

    async def run_probe_once(self, key: str, kind: ProbeKind) -> ProbeResult: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=1) + "\n", status=status,
                        content_type="application/json")


def _not_found(key: str) -> web.Response:
    return _json({"error": f"domain {key!r} is not monitored (no running domain with a "
                           "health spec by that name or UUID)"}, 404)


def result_to_dict(result: ProbeResult) -> dict[str, Any]:
    return {"outcome": result.outcome.value, "message": excerpt(result.message, MESSAGE_LIMIT),
            "duration": round(result.duration, 6), "time": result.started_at}


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class OnDemandProbes:
    """One run at a time per key, and a rest of `interval` between a run's end and the
    next run's start. `run` joins the run in flight, or starts one, or raises
    RateLimited with the seconds left to wait."""

    def __init__(self, interval: float = ON_DEMAND_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._running: dict[Any, asyncio.Task[Any]] = {}
        self._ended: dict[Any, float] = {}  # key -> clock time its last run ended
        self.requests = 0  # requests served or waiting, for the tests' wait-until

    async def run(self, key: Any, start: Callable[[], Awaitable[Any]]) -> Any:
        self.requests += 1
        task = self._running.get(key)
        if task is None:
            now = self._clock()
            self._forget_rested(now)
            wait = self._ended.get(key, -math.inf) + self.interval - now
            if wait > 0:
                raise RateLimited(wait)
            task = self._running[key] = asyncio.ensure_future(start())
            task.add_done_callback(lambda done: self._ended_run(key, done))
        # A caller that goes away (its client hung up) must not cancel the others' run.
        return await asyncio.shield(task)

    def _ended_run(self, key: Any, task: asyncio.Task[Any]) -> None:
        del self._running[key]
        self._ended[key] = self._clock()
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    def _forget_rested(self, now: float) -> None:
        for key in [key for key, ended in self._ended.items()
                    if now - ended >= self.interval]:
            del self._ended[key]


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a unix socket, as the kernel saw it at connect time."""

    uid: int
    gid: int
    groups: frozenset[int]


def unix_peer(request: web.Request) -> Peer | None:
    """The caller's credentials; None when it is not on the unix socket (TCP)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _pid, uid, gid = struct.unpack("iII", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII")))
    return Peer(uid, gid, _peer_groups(sock))


def _peer_groups(sock: Any) -> frozenset[int]:
    """The caller's supplementary groups (SO_PEERGROUPS, Linux 4.13), or none."""
    for count in (64, NGROUPS_MAX):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * count)
        except OSError:
            continue  # ERANGE: more groups than room; ENOPROTOOPT: an older kernel
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
    return frozenset()


class ProbePermission:
    """May this caller run probes on demand? Root, the daemon's own user, and members
    of `probe_group` (primary or supplementary group of the calling process)."""

    def __init__(self, probe_group: str = "",
                 peer: Callable[[web.Request], Peer | None] = unix_peer) -> None:
        self.probe_group = probe_group
        self._gid = grp.getgrnam(probe_group).gr_gid if probe_group else None
        self._peer = peer

    def refusal(self, request: web.Request) -> str | None:
        """None if allowed; else why not, and what to do about it."""
        peer = self._peer(request)
        if peer is None:
            return ("running probes on demand needs the unix socket (the TCP listener "
                    "cannot tell who is calling and is read-only)")
        if peer.uid in (0, os.geteuid()):
            return None
        if self._gid is not None and (peer.gid == self._gid or self._gid in peer.groups):
            return None
        who = f"group {self.probe_group!r}" if self.probe_group else "root"
        return (f"running probes on demand is for {who} only (uid {peer.uid} is not; "
                "the [api] probe_group setting names who else may); reading status and "
                "events needs no more than the socket")


def ready_response(source: StatusSource, key: str) -> web.Response:
    """GET /ready/<domain> (here and on the web listener): 200 "ready", or 503 with
    the reason, also for a domain not monitored."""
    try:
        entry = source.domain_status(key)
    except LookupError:
        return web.Response(text="not ready: not monitored\n", status=503)
    if entry["ready"]:
        return web.Response(text="ready\n")
    return web.Response(text=f"not ready: {entry.get('notReadyReason') or 'unknown'}\n",
                        status=503)


def metrics_response(body: bytes) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def build_app(source: StatusSource, *, permission: ProbePermission | None = None,
              on_demand: OnDemandProbes | None = None) -> web.Application:
    routes = web.RouteTableDef()
    permission = permission or ProbePermission()
    on_demand = on_demand or OnDemandProbes()

    @routes.get("/status")
    async def status(_request: web.Request) -> web.Response:
        return _json(source.status())

    @routes.get("/status/{domain}")
    async def domain_status(request: web.Request) -> web.Response:
        key = request.match_info["domain"]
        try:
            return _json(source.domain_status(key))
        except LookupError:
            return _not_found(key)

    @routes.get("/ready/{domain}")
    async def ready(request: web.Request) -> web.Response:
        return ready_response(source, request.match_info["domain"])

    @routes.get("/events")
    async def events(request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            since = int(query.get("since", "0"))
        except ValueError:
            return _json({"error": "since must be an event sequence number"}, 400)
        domain = query.get("domain") or None
        follow = query.get("follow", "") in ("1", "true", "yes")
        queue = source.events.subscribe() if follow else None
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            for event in source.events.recent(domain, since):
                since = event.seq
                await response.write(_line(event.to_dict()))
            while queue is not None:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except asyncio.TimeoutError:
                    await response.write(b"\n")
                    continue
                if event is None:
                    break  # daemon stopping, or we fell too far behind
                if event.seq > since and (domain is None or event.domain == domain):
                    await response.write(_line(event.to_dict()))
        finally:
            if queue is not None:
                source.events.unsubscribe(queue)
        await response.write_eof()
        return response

    @routes.get("/metrics")
    async def metrics(_request: web.Request) -> web.Response:
        return metrics_response(source.metrics.render())

    @routes.post("/probe/{domain}/{kind}")
    async def probe(request: web.Request) -> web.Response:
        key, kind_name = request.match_info["domain"], request.match_info["kind"]
        kind = PROBE_KINDS.get(kind_name)
        if kind is None:
            return _json({"error": f"unknown probe {kind_name!r}; use one of "
                                   f"{', '.join(PROBE_KINDS)}"}, 400)
        refusal = permission.refusal(request)
        if refusal is not None:
            return _json({"error": refusal}, 403)
        try:
            uuid = source.domain_status(key).get("uuid", key)
        except LookupError:
            return _not_found(key)
        try:
            result = await on_demand.run((uuid, kind), lambda: source.run_probe_once(key, kind))
        except RateLimited as limited:
            return _rate_limited(key, kind, limited.retry_after, on_demand.interval)
        except LookupError as exc:
            return _json({"error": str(exc.args[0] if exc.args else exc)}, 404)
        return _json({"domain": key, "probe": kind.short, **result_to_dict(result)})

    app = web.Application()
    app.add_routes(routes)
    return app


def _rate_limited(key: str, kind: ProbeKind, retry_after: float, interval: float
                  ) -> web.Response:
    seconds = max(1, math.ceil(retry_after))
    response = _json({"error": f"the {kind.short} probe of {key!r} ended less than "
                               f"{interval:g} s ago; retry in {seconds} s"}, 429)
    response.headers["Retry-After"] = str(seconds)
    return response


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data) + "\n").encode()


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    # The socket must never exist with looser permissions, not even for a moment.
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class ApiServer:
    def __init__(self, source: StatusSource, socket_path: str, *, socket_group: str = "",
                 probe_group: str = "", on_demand: OnDemandProbes | None = None) -> None:
        self.socket_path = socket_path
        self.socket_group = socket_group
        app = build_app(source, permission=ProbePermission(probe_group), on_demand=on_demand)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        os.makedirs(os.path.dirname(self.socket_path), mode=0o755, exist_ok=True)
        try:
            os.unlink(self.socket_path)  # left over from a daemon that was killed
        except FileNotFoundError:
            pass
        with _umask(0o117):
            await web.UnixSite(self._runner, self.socket_path).start()
        os.chmod(self.socket_path, 0o660)
        if self.socket_group:
            os.chown(self.socket_path, -1, grp.getgrnam(self.socket_group).gr_gid)

    async def stop(self) -> None:
        await self._runner.cleanup()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
