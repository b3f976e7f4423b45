"""Probe handlers' test helpers: a fake guest, loopback HTTP servers, a free port
(a helper module shared by the probe tests; no tests)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from vmhealth import spec
from vmhealth.monitor.probes import run_probe

TIMEOUT = 0.5  # seconds; the model allows floats, parse_spec would insist on >= 1


@dataclass
class FakeAccess:
    """GuestAccess without libvirt: fixed addresses and a scripted agent."""

    addrs: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    agent: Any = None  # callable(command) -> return value, or raises
    commands: list[dict] = field(default_factory=list)
    name: str = "web1"
    cached: bool = True  # False: cached_addresses() says "look them up" (a stale cache)
    lookups: int = 0

    async def addresses(self) -> list[str]:
        self.lookups += 1
        return list(self.addrs)

    def cached_addresses(self) -> list[str] | None:
        return list(self.addrs) if self.cached else None

    async def agent_command(self, command: dict, timeout: float) -> Any:
        self.commands.append(command)
        return self.agent(command)

    def suppression_reason(self) -> str | None:
        return None


def run(coro):
    return asyncio.run(coro)


def probe_of(handler, timeout: float = TIMEOUT) -> spec.Probe:
    return spec.Probe(handler=handler, timeout_seconds=timeout)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# A tiny HTTP server on loopback: routes map a path to what to answer.
# ---------------------------------------------------------------------------

@dataclass
class Route:
    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    content_length: int | None = None  # announce more than is sent to keep it open
    hang: bool = False  # never answer


@dataclass
class HttpServer:
    routes: dict[str, Route]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            target = lines[0].split(" ")[1]
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            self.requests.append((target, headers))
            route = self.routes.get(target.split("?")[0], Route(status=404, body=b"nope"))
            if route.hang:
                await asyncio.sleep(30)
                return
            length = route.content_length if route.content_length is not None else len(
                route.body)
            extra = "".join(f"{k}: {v}\r\n" for k, v in route.headers)
            writer.write(f"HTTP/1.1 {route.status} X\r\nContent-Length: {length}\r\n{extra}"
                         f"\r\n".encode() + route.body)
            await writer.drain()
            if route.content_length is not None:
                await asyncio.sleep(30)  # keep the connection open, the rest never comes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def start_http(routes: dict[str, Route], host: str = "127.0.0.1",
                     tls: ssl.SSLContext | None = None) -> tuple[HttpServer, asyncio.Server]:
    state = HttpServer(routes)
    server = await asyncio.start_server(state.handle, host, 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    return state, server


async def http_probe(routes, handler_kwargs=None, *, host="127.0.0.1", addrs=None,
                     tls=None, timeout=TIMEOUT):
    state, server = await start_http(routes, host, tls)
    try:
        handler = spec.HttpGet(port=state.port, **(handler_kwargs or {}))
        access = FakeAccess(addrs=addrs if addrs is not None else [host])
        result = await run_probe(probe_of(handler, timeout), access)
    finally:
        server.close()
    return result, state


async def probe_against(on_connect, handler_for_port):
    """Run a probe built by handler_for_port(port) against a loopback server."""
    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await run_probe(probe_of(handler_for_port(port)), FakeAccess())
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
