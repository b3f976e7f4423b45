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
from vmhealth.monitor.interfaces import GuestAccess, Outcome
from vmhealth.monitor.native_lane import Recipe
from vmhealth.monitor.probes.common import (
    OUTPUT_CAP_BYTES,
    ConnectFailed,
    NetworkRun,
    OnDone,
    describe_os_error,
    host_for_url,
    printable_excerpt,
)
from vmhealth.monitor.probes.dial import Sink, raise_if_host_exhausted

USER_AGENT = f"vmhealth/{__version__}"
MAX_REDIRECTS = 10  # kubelet (Go's http.Client): "stopped after 10 redirects"
DEFAULT_PORTS = {"http": 80, "https": 443}
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

    def release(self) -> None:
        """Drop the parser: it refers back to this object, and a cycle per probe would
        leave ~1,000 objects a second for the cyclic garbage collector."""
        self._parser = None

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


def _build_request(handler: spec.HttpGet, target: str, default_host: str) -> bytes:
    """The request bytes for one probe target, validated part by part (HttpProbeStarter
    keeps them).

    Raises ValueError naming the offending header by position (never its value).
    """
    given = {name.lower() for name, _value in handler.http_headers}
    if any(ch in target for ch in "\r\n \x00"):
        raise ValueError("the request path contains spaces or control characters")
    lines = [f"GET {target} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {default_host}")
    for index, (name, value) in enumerate(handler.http_headers):
        if not spec.is_http_header_name(name):
            raise ValueError(f"httpHeaders[{index}].name is not a valid HTTP header name")
        if not spec.is_http_header_value(value):
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


async def _tls_exchange(hosts: list[str], port: int, request_for: Callable[[str], bytes],
                        server_hostname: str | None) -> tuple[str, _Response]:
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
        return host, response
    raise ConnectFailed("; ".join(problems))


class HttpProbeStarter:
    """Starts runs of one httpGet probe; keeps its request bytes and URL per target."""

    __slots__ = ("probe", "handler", "host_override", "_requests", "repeatable")

    def __init__(self, probe: spec.Probe) -> None:
        assert isinstance(probe.handler, spec.HttpGet)
        self.probe = probe
        self.handler = probe.handler
        self.host_override = _host_header_value(self.handler)
        self._requests: dict[tuple[str, str, int, str], tuple[bytes, str]] = {}
        # What the last finished run's success may be repeated as (native_lane.py).
        self.repeatable: Recipe | None = None

    def __call__(self, access: GuestAccess, on_done: OnDone) -> Callable:
        return _HttpRun(self, access, on_done).start(self.handler.host)

    def request(self, scheme: str, host: str, port: int, target: str) -> tuple[bytes, str]:
        """(request bytes, URL) for one target; raises ValueError (see _build_request)."""
        key = (scheme, host, port, target)
        found = self._requests.get(key)
        if found is None:
            if len(self._requests) > 64:  # guest addresses and redirects vary; stay small
                self._requests.clear()
            authority = _authority(host, port, scheme)
            found = (_build_request(self.handler, target, authority),
                     f"{scheme}://{authority}{target}")
            self._requests[key] = found
        return found

    def timeout_message(self) -> str:
        return (f"HTTP GET port {self.handler.port}: timed out after "
                f"{self.probe.timeout_seconds}s")


class _HttpRun(NetworkRun):
    """One httpGet run: an exchange per URL, redirects followed (see the module docstring)."""

    __slots__ = ("_starter", "_scheme", "_url_port", "_target", "_redirects")

    def __init__(self, starter: HttpProbeStarter, access: GuestAccess, on_done: OnDone) -> None:
        super().__init__(starter.probe.timeout_seconds, access, on_done)
        self._starter = starter
        starter.repeatable = None
        handler = starter.handler
        self._scheme = handler.scheme.value.lower()
        self._url_port = handler.port
        self._target = handler.path
        self._redirects = 0

    def timeout_message(self) -> str:
        return self._starter.timeout_message()

    def begin(self, hosts: list[str]) -> None:
        try:
            self.request_for(hosts[0])  # a bad header ends the run here
        except ValueError as exc:
            self.finish(Outcome.ERROR, f"cannot build the request: {exc}")
            return
        if self._scheme == "http":
            self.dial(hosts, self._url_port, exchange=True)
            return
        override = self._starter.host_override
        sni = override.rsplit(":", 1)[0] if override else None
        self.run_in_task(_tls_exchange(hosts, self._url_port, self.request_for, sni))

    def request_for(self, host: str) -> bytes:
        return self._starter.request(self._scheme, host, self._url_port, self._target)[0]

    def new_sink(self) -> _Response:
        return _Response()

    def exchanged(self, host: str | None, sink: Sink | None,
                  error: BaseException | None) -> None:
        scheme, port = self._scheme, self._url_port
        if isinstance(error, ConnectFailed):
            self.finish(Outcome.FAILURE, f"HTTP GET {scheme} port {port}: {error}")
            return
        if error is not None or host is None or not isinstance(sink, _Response):
            text = describe_os_error(error) if isinstance(error, OSError) else str(error)
            self.finish(Outcome.FAILURE, f"HTTP GET {scheme} port {port}: {text}")
            return
        response = sink
        response.release()
        url = self._starter.request(scheme, host, port, self._target)[1]
        status = response.status
        if 300 <= status < 400 and response.location is not None:
            self._redirect(host, url, status, response.location)
            return
        if 200 <= status < 400:
            message = f"HTTP {status} from GET {url}"
            if status < 300 and self._redirects == 0 and scheme == "http":
                self._starter.repeatable = self.recipe(
                    host, self.request_for(host), status, message)
            self.finish(Outcome.SUCCESS, message)
            return
        excerpt = printable_excerpt(bytes(response.body))
        self.finish(Outcome.FAILURE, f"HTTP {status} from GET {url}"
                                     + (f": {excerpt}" if excerpt else ""))

    def _redirect(self, host: str, url: str, status: int, location: bytes) -> None:
        if self._redirects == MAX_REDIRECTS:
            self.finish(Outcome.FAILURE,
                        f"HTTP GET {url}: stopped after {MAX_REDIRECTS} redirects")
            return
        parts = urlsplit(urljoin(url, location.decode("latin-1")))
        if parts.scheme not in DEFAULT_PORTS or not _same_host(parts.hostname or "", host):
            # Kubelet: not followed, reported as success with a warning.
            self.finish(Outcome.SUCCESS,
                        f"warning: HTTP {status} from GET {url} redirects to another host "
                        f"({parts.hostname}); not followed, counted as success")
            return
        self._redirects += 1
        self._scheme = parts.scheme
        self._url_port = parts.port or DEFAULT_PORTS[parts.scheme]
        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_PATH_SAFE)
        self._target = target
        self.begin([host])
