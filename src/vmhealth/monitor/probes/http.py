"""httpGet probe: plain HTTP over callback-driven sockets (dial.py), HTTPS over asyncio's
TLS transports, with httptools (llhttp) parsing every response.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (httpGet), as kubelet
implements them: scheme HTTP or HTTPS (certificate not verified); host = the spec's
host, else the guest's addresses tried in order; path, headers (a `Host` header
overrides the request host); `User-Agent: vmhealth/<version>` and `Accept: */*`
unless given; one connection per probe (`Connection: close`, as kubelet's
DisableKeepAlives); success 200 <= status < 400; body read at most 10 KiB; redirects
to the same host name followed (at most 10); a redirect to another host is not
followed and counts as success with a warning; the whole probe, redirects included,
within timeoutSeconds.

Why httptools over raw sockets rather than aiohttp or httpx: at ~1,000 HTTP probes
a second the client's CPU per request decides whether the daemon fits its budget;
docs/probes.md records the measurement. The request is a fixed GET built once per
(probe, host) from validated parts; every byte the guest sends is parsed by llhttp.

Header values never appear in messages or logs: they may carry credentials.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Callable
from urllib.parse import quote, urljoin, urlsplit

import httptools

from vmhealth import __version__, spec
from vmhealth.monitor.interfaces import GuestAccess, Outcome, ProbeResult
from vmhealth.monitor.probes.common import (
    OUTPUT_CAP_BYTES,
    ConnectFailed,
    ProbeClock,
    describe_os_error,
    dial_first,
    host_for_url,
    printable_excerpt,
    run_on_targets,
    with_timeout,
)
from vmhealth.monitor.probes.dial import raise_if_host_exhausted

USER_AGENT = f"vmhealth/{__version__}"
MAX_REDIRECTS = 10  # kubelet (Go's http.Client): "stopped after 10 redirects"
DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Characters kept as they are when a redirect's Location is put on the request line.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"


class InvalidResponse(Exception):
    """The guest's answer is not HTTP/1.x that llhttp accepts."""


class _Response:
    """A dial.Sink: httptools callbacks collecting status, Location and <= 10 KiB of body."""

    __slots__ = ("_parser", "status", "location", "body", "headers_complete", "complete")

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.location: bytes | None = None
        self.body = bytearray()
        self.headers_complete = False
        self.complete = False

    def feed(self, data: bytes) -> bool:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = True
        except httptools.HttpParserError as exc:
            raise InvalidResponse(f"invalid HTTP response ({exc})") from None
        return self.complete

    def end_of_stream(self) -> None:
        # After the headers, the end of the connection ends an EOF-delimited body.
        if not self.headers_complete:
            raise InvalidResponse("connection closed before a complete response")
        self.complete = True

    # -- httptools callbacks ------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"location":
            self.location = value

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_complete = True

    def on_body(self, body: bytes) -> None:
        room = OUTPUT_CAP_BYTES - len(self.body)
        self.body += body[:room]
        if len(self.body) >= OUTPUT_CAP_BYTES:
            self.complete = True  # read no more than 10 KiB (kubelet's limit)

    def on_message_complete(self) -> None:
        self.complete = True


class _TlsExchange(asyncio.Protocol):
    """Sends one request over a TLS transport and feeds the answer to a _Response."""

    def __init__(self, request: bytes, response: _Response, done: asyncio.Future) -> None:
        self._request = request
        self._response = response
        self._done = done
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            finished = self._response.feed(data)
        except InvalidResponse as exc:
            self._end(exc)
            return
        if finished:
            self._end(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._response.end_of_stream()
        except InvalidResponse as verdict:
            self._end(exc or verdict)
            return
        self._end(None)

    def _end(self, error: BaseException | None) -> None:
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
        self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


@functools.lru_cache(maxsize=1)
def _insecure_tls_context() -> ssl.SSLContext:
    """Kubelet's HTTPS probes skip certificate checks (InsecureSkipVerify); so do we."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _host_header_value(handler: spec.HttpGet) -> str | None:
    for name, value in handler.http_headers:
        if name.lower() == "host":
            return value
    return None


@functools.lru_cache(maxsize=4096)
def _build_request(handler: spec.HttpGet, target: str, default_host: str) -> bytes:
    """The request bytes for one probe target; built once, validated part by part.

    Raises ValueError naming the offending header by position (never its value).
    """
    given = {name.lower() for name, _value in handler.http_headers}
    if any(ch in target for ch in "\r\n \x00"):
        raise ValueError("the request path contains spaces or control characters")
    lines = [f"GET {target} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {default_host}")
    for index, (name, value) in enumerate(handler.http_headers):
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ValueError(f"httpHeaders[{index}].name is not a valid HTTP header name")
        if any(ch in value for ch in "\r\n\x00"):
            raise ValueError(f"httpHeaders[{index}].value contains line breaks")
        lines.append(f"{name}: {value}")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in given:
        lines.append("Accept: */*")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _authority(host: str, port: int, scheme: str) -> str:
    if DEFAULT_PORTS[scheme] == port:
        return host_for_url(host)
    return f"{host_for_url(host)}:{port}"


def _same_host(a: str, b: str) -> bool:
    return a.strip("[]").lower() == b.strip("[]").lower()


async def _exchange(handler: spec.HttpGet, hosts: list[str], port: int, target: str,
                    scheme: str, server_hostname: str | None,
                    deadline: float) -> tuple[_Response, str]:
    """Connect to the first host that accepts, send the request, read the response.

    Raises ValueError when the request cannot be built (see _build_request),
    ConnectFailed, OSError, InvalidResponse or TimeoutError (at `deadline`).
    """
    def request_for(host: str) -> bytes:
        return _build_request(handler, target, _authority(host, port, scheme))

    if scheme == "http":
        host, response = await dial_first(hosts, port, deadline, request_for=request_for,
                                          sink_factory=_Response)
        return response, host
    return await with_timeout(_tls_exchange(hosts, port, request_for, server_hostname),
                              max(0.0, deadline - asyncio.get_running_loop().time()))


async def _tls_exchange(hosts: list[str], port: int, request_for: Callable[[str], bytes],
                        server_hostname: str | None) -> tuple[_Response, str]:
    loop = asyncio.get_running_loop()
    problems = []
    for host in hosts:
        done = loop.create_future()
        response = _Response()
        exchange = _TlsExchange(request_for(host), response, done)
        try:
            await loop.create_connection(lambda exchange=exchange: exchange, host, port,
                                         ssl=_insecure_tls_context(),
                                         server_hostname=server_hostname or "")
        except OSError as exc:
            raise_if_host_exhausted(exc)  # the host's trouble, as on the plain path
            problems.append(f"{host_for_url(host)}:{port}: {describe_os_error(exc)}")
            continue
        try:
            await done
        except BaseException:
            done.cancel()  # nobody is left to read what the aborted connection reports
            exchange.abort()
            raise
        return response, host
    raise ConnectFailed("; ".join(problems))


async def _probe(handler: spec.HttpGet, hosts: list[str], clock: ProbeClock,
                 deadline: float) -> ProbeResult:
    scheme = handler.scheme.value.lower()
    port = handler.port
    target = handler.path
    host_override = _host_header_value(handler)
    for redirects in range(MAX_REDIRECTS + 1):
        sni = host_override.rsplit(":", 1)[0] if host_override else None
        try:
            reader, host = await _exchange(handler, hosts, port, target, scheme, sni,
                                           deadline)
        except ValueError as exc:
            return clock.result(Outcome.ERROR, f"cannot build the request: {exc}")
        except ConnectFailed as exc:
            return clock.result(Outcome.FAILURE, f"HTTP GET {scheme} port {port}: {exc}")
        except TimeoutError:  # an OSError as well: reported for the whole probe below
            raise
        except (OSError, InvalidResponse) as exc:
            text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            return clock.result(Outcome.FAILURE, f"HTTP GET {scheme} port {port}: {text}")
        url = f"{scheme}://{_authority(host, port, scheme)}{target}"
        status = reader.status
        if 300 <= status < 400 and reader.location is not None:
            if redirects == MAX_REDIRECTS:
                return clock.result(Outcome.FAILURE, f"HTTP GET {url}: stopped after "
                                                     f"{MAX_REDIRECTS} redirects")
            location = urljoin(url, reader.location.decode("latin-1"))
            parts = urlsplit(location)
            if parts.scheme not in DEFAULT_PORTS or not _same_host(parts.hostname or "", host):
                # Kubelet: not followed, reported as success with a warning.
                return clock.result(Outcome.SUCCESS,
                                    f"warning: HTTP {status} from GET {url} redirects to "
                                    f"another host ({parts.hostname}); not followed, "
                                    "counted as success")
            scheme = parts.scheme
            port = parts.port or DEFAULT_PORTS[scheme]
            target = quote(parts.path or "/", safe=_PATH_SAFE)
            if parts.query:
                target += "?" + quote(parts.query, safe=_PATH_SAFE)
            hosts = [host]
            continue
        if 200 <= status < 400:
            return clock.result(Outcome.SUCCESS, f"HTTP {status} from GET {url}")
        excerpt = printable_excerpt(bytes(reader.body))
        return clock.result(Outcome.FAILURE, f"HTTP {status} from GET {url}"
                                             + (f": {excerpt}" if excerpt else ""))
    raise AssertionError("unreachable: the loop returns on its last round")


async def run_http_probe(probe: spec.Probe, access: GuestAccess) -> ProbeResult:
    handler = probe.handler
    assert isinstance(handler, spec.HttpGet)
    return await run_on_targets(
        probe, handler.host, access, functools.partial(_probe, handler),
        f"HTTP GET port {handler.port}: timed out after {probe.timeout_seconds}s")
