"""The daemon's HTTP API (aiohttp): a unix socket, and optionally a loopback TCP address.

GET  /status                  every monitored domain (JSON)
GET  /status/<domain>         one domain, by name or UUID (404 when not monitored)
GET  /ready/<domain>          200 "ready" or 503 with the reason: for load balancers
GET  /events[?follow=1&since=SEQ&domain=NAME]
                              events as newline-delimited JSON; follow keeps streaming
GET  /metrics                 Prometheus text format
POST /probe/<domain>/<kind>   run one probe now (kind: liveness, readiness, startup)
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from aiohttp import web

from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.metrics import CONTENT_TYPE, Metrics
from vmhealth.spec import ProbeKind

HEARTBEAT_SECONDS = 15.0  # an empty line now and then, so a dead client is noticed
PROBE_KINDS = {kind.short: kind for kind in ProbeKind}


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
    return {"outcome": result.outcome.value, "message": result.message,
            "duration": round(result.duration, 6), "time": result.started_at}


def build_app(source: StatusSource) -> web.Application:
    routes = web.RouteTableDef()

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
        key = request.match_info["domain"]
        try:
            entry = source.domain_status(key)
        except LookupError:
            return web.Response(text="not ready: not monitored\n", status=503)
        if entry["ready"]:
            return web.Response(text="ready\n")
        probes = entry.get("probes", {})
        reasons = [f"{kind}: {p['reason']}" for kind, p in probes.items() if not p["healthy"]]
        if "action" in entry:
            reasons.insert(0, f"liveness action {entry['action']['action']} in progress")
        return web.Response(text="not ready: " + ("; ".join(reasons) or "unknown") + "\n",
                            status=503)

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
        response = web.Response(body=source.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    @routes.post("/probe/{domain}/{kind}")
    async def probe(request: web.Request) -> web.Response:
        key, kind_name = request.match_info["domain"], request.match_info["kind"]
        kind = PROBE_KINDS.get(kind_name)
        if kind is None:
            return _json({"error": f"unknown probe {kind_name!r}; use one of "
                                   f"{', '.join(PROBE_KINDS)}"}, 400)
        try:
            source.domain_status(key)
        except LookupError:
            return _not_found(key)
        try:
            result = await source.run_probe_once(key, kind)
        except LookupError as exc:
            return _json({"error": str(exc.args[0] if exc.args else exc)}, 404)
        return _json({"domain": key, "probe": kind.short, **result_to_dict(result)})

    app = web.Application()
    app.add_routes(routes)
    return app


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
                 tcp: tuple[str, int] | None = None) -> None:
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.tcp = tcp
        self._runner = web.AppRunner(build_app(source), handle_signals=False, access_log=None)

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
        if self.tcp is not None:
            host, port = self.tcp
            await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
