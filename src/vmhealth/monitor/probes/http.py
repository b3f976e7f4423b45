"""httpGet probe: plain HTTP over callback-driven sockets (dial.py), HTTPS over asyncio's
TLS transports, with httptools (llhttp) parsing every response.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (httpGet), as kubelet
implements them: scheme HTTP or HTTPS (certificate not verified); host = the spec's
host, else the guest's addresses tried in order; path, headers (a `Host` header
overrides the request host); `User-Agent: vmhealth/<version>` and `Accept: */*`
unless given; one connection per probe (`Connection: close`, as kubelet's
DisableKeepAlives); success 200 <= status < 400, interim (1xx) answers skipped; body
read at most 10 KiB; redirects to the same host name followed (at most 10); a
redirect to another host is not followed and counts as success with a warning; the
whole probe, redirects included, within timeoutSeconds.

Guests are untrusted ("httpGet against hostile guests" in docs/probes.md): the head
and what follows it are bounded (MAX_HEAD_BYTES, MAX_AFTER_HEAD_BYTES), dial.py reads
in slices with the deadline checked, and guest text reaches a message only through
excerpt().

Why httptools over raw sockets rather than aiohttp or httpx: at ~1,000 HTTP probes
a second the client's CPU per request decides whether the daemon fits its budget;
docs/probes.md records the measurement. The request is a fixed GET built once per
(probe, host) from validated parts; every byte the guest sends is parsed by llhttp.

Header values never appear in messages or logs: they may carry credentials. Nor does
the body: kubelet reports only the status, as bodies can hold secrets too (Kubernetes
issue 99425).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Callable
from urllib.parse import quote, urljoin, urlsplit

import httptools

from vmhealth import __version__, spec
from vmhealth.excerpt import excerpt
from vmhealth.monitor.interfaces import GuestAccess, OnDone, Outcome, Recipe
from vmhealth.monitor.probes.common import (
    OUTPUT_CAP_BYTES,
    ConnectFailed,
    NetworkRun,
    describe_os_error,
    host_for_url,
)
from vmhealth.monitor.probes.dial import Sink, raise_if_host_exhausted, sockaddr
from vmhealth.spec_rules import is_http_header_name, is_http_header_value

USER_AGENT = f"vmhealth/{__version__}"
MAX_REDIRECTS = 10  # kubelet (Go's http.Client): "stopped after 10 redirects"
# The status line and headers, interim (1xx) answers included, end within the first
# 64 KiB of an answer, or the probe fails. Go's client (kubelet's) allows 10 MiB, but it
# parses in linear time; httptools grows a header value by concatenation, quadratic in
# the number of pieces it arrives in (a 32 MiB value held the event loop 3.3 s on
# the 2-core test machine, 2026-12-04, vmhealth 0.1.0). A
# health endpoint's head is a few hundred bytes, and servers accept far less from
# clients (nginx: 8 KiB lines, Node.js: 16 KiB in all), so 64 KiB costs no real guest.
MAX_HEAD_BYTES = 64 * 1024
# After the head, what may be read besides the 10 KiB of body: chunk sizes, chunk
# extensions and trailers. 10 KiB of body in 1-byte chunks takes 60 KiB; more than
# this is junk (Go's client fails on it too), and a FAILURE.
MAX_AFTER_HEAD_BYTES = 64 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
# Given headers sent once, by _build_request itself, not in the order given.
_SENT_ONCE = frozenset({"host", "user-agent"})
# Characters kept as they are when a redirect's Location is put on the request line.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"


class InvalidResponse(Exception):
    """The guest's answer is not HTTP/1.x that llhttp accepts."""


class _Response:
    """A dial.Sink: httptools callbacks collecting the final status and its Location.

    Bounded (see MAX_HEAD_BYTES): bytes are counted before httptools sees them, so a
    guest's endless header cannot start httptools' quadratic growth of header values.
    Interim (1xx) answers are skipped as Go's client (kubelet's) skips them. At most
    10 KiB of body is read (kubelet's limit) and none of it is kept: kubelet reports
    only the status, since bodies can hold secrets (Kubernetes issue 99425).
    """

    __slots__ = ("_parser", "status", "location", "headers_complete", "complete", "_room",
                 "_body_room", "_interim", "_framed")

    def __init__(self) -> None:
        self._parser: httptools.HttpResponseParser | None = None  # made at the first byte
        self.status = 0
        self.location: bytes | None = None
        self.headers_complete = False
        self.complete = False
        self._room = MAX_HEAD_BYTES  # what may still be parsed before the limit is hit
        self._body_room = OUTPUT_CAP_BYTES
        self._interim = False
        # The final answer says where its body ends (Content-Length, chunked): then the
        # end of the stream before that end is a truncated answer, not an EOF body.
        self._framed = False

    def feed(self, data: bytes) -> bool:
        room = self._room
        if len(data) > room:
            return self._feed_beyond_room(data)
        self._room = room - len(data)  # on_headers_complete may grant new room
        self._parse(data)
        return self.complete

    def _feed_beyond_room(self, data: bytes) -> bool:
        room, self._room = self._room, 0
        if room:
            self._parse(data[:room])  # the head may end in there: that grants new room
        if self.complete:
            return True
        if not self._room:
            self.release()
            if self.headers_complete:
                raise InvalidResponse(f"invalid HTTP response (over "
                                      f"{MAX_AFTER_HEAD_BYTES // 1024} KiB of chunk framing "
                                      "or trailers after the headers)")
            raise InvalidResponse(f"invalid HTTP response (status line and headers over "
                                  f"{MAX_HEAD_BYTES // 1024} KiB)")
        return self.feed(data[room:])

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # not before the first byte: a refused attempt makes no cycle
            parser = self._parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = True
        except httptools.HttpParserError as exc:
            if not self.complete:  # bytes after a complete answer change nothing
                self.release()
                raise InvalidResponse(f"invalid HTTP response ({excerpt(exc)})") from None

    def release(self) -> None:
        """Drop the parser: it refers back to this object, and a cycle per probe would
        leave ~1,000 objects a second for the cyclic garbage collector."""
        self._parser = None

    def end_of_stream(self) -> None:
        # After the headers, the end of the connection ends an EOF-delimited body; a
        # body of announced length or chunked that it cuts short is a failure, as in
        # kubelet (reading the body fails with an unexpected EOF).
        if not self.headers_complete:
            raise InvalidResponse("connection closed before a complete response")
        if not self.complete and self._framed and not (
                300 <= self.status < 400 and self.location is not None):
            # (A redirect's body is drained and its errors ignored by Go's client.)
            raise InvalidResponse("connection closed before the end of the body")
        self.complete = True

    # -- httptools callbacks ------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        # Only the final answer's headers: an interim answer's were dropped at its end,
        # and trailers (after the body) never redirect.
        if self.headers_complete:
            return
        lowered = name.lower()
        if lowered == b"location":
            self.location = value
        elif lowered == b"content-length" or (lowered == b"transfer-encoding"
                                              and b"chunked" in value.lower()):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self.complete:
            return  # another answer after the first: only the first counts (as in Go)
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim (103 Early Hints, 100 Continue...): the final answer follows. Its
            # bytes stay counted against MAX_HEAD_BYTES. 101 is final (as in Go): it
            # switches protocols, and is a FAILURE like any status under 200.
            self._interim = True
            self.location = None
            self._framed = False
            return
        self.status = status
        self.headers_complete = True
        self._room = MAX_AFTER_HEAD_BYTES

    def on_body(self, body: bytes) -> None:
        self._body_room -= len(body)
        if self._body_room <= 0:
            self.complete = True  # read no more than 10 KiB (kubelet's limit)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
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
    """The Host header to send instead of the URL's host: the first one given, IPv6
    literals bracketed and without a zone; None when none is given or it is empty
    (kubelet: `req.Host = headers.Get("Host")`, and Go sends the URL's host for "")."""
    for name, value in handler.http_headers:
        if name.lower() == "host":
            host, port = _split_host_port(value)
            if ":" in host:  # an IPv6 literal
                host = f"[{host.split('%', 1)[0]}]"
            return (host + port) or None
    return None


def _split_host_port(value: str) -> tuple[str, str]:
    """(host, ":port" or "") of a Host header value; IPv6 literals with or without
    brackets (without brackets there is no port: "::1" is a host)."""
    if value.startswith("["):
        end = value.find("]")
        if end > 0:
            return value[1:end], value[end + 1:]
        return value, ""  # malformed: sent as given, for the guest to judge
    if value.count(":") > 1:
        return value, ""
    host, colon, port = value.partition(":")
    return host, colon + port


def _server_name(host: str) -> str:
    """The TLS server name (SNI) for `host` (a Host header's value or the spec's host):
    its name, or "" for an IP literal, which TLS does not allow as a server name
    (RFC 6066 section 3) and Go's client (kubelet's) never sends."""
    name = _split_host_port(host)[0].split("%", 1)[0]
    return "" if sockaddr(name, 0) is not None else name


def _without_zone(authority: str) -> str:
    """An authority as a Host header carries it: "[fe80::1%eth0]:80" -> "[fe80::1]:80"
    (the zone means something only on this host; Go's client drops it too)."""
    start = authority.find("%")
    if start < 0:
        return authority
    end = authority.find("]", start)
    return authority[:start] + (authority[end:] if end > 0 else "")


def _build_request(handler: spec.HttpGet, target: str, default_host: str) -> bytes:
    """The request bytes for one probe target, validated part by part (HttpProbeStarter
    keeps them). The headers are those Go's client sends for kubelet's request: one
    Host (the given one, else the URL's); the given headers in order; one User-Agent
    (ours unless given, none when the first given is empty); `Accept: */*` unless
    given (and none at all when the first given is empty: kubelet removes it).

    Raises ValueError naming the offending header by position (never its value).
    """
    if any(ch in target for ch in "\r\n \x00"):
        raise ValueError("the request path contains spaces or control characters")
    first: dict[str, str] = {}
    for name, value in handler.http_headers:
        first.setdefault(name.lower(), value)
    once = _SENT_ONCE if first.get("accept") != "" else _SENT_ONCE | {"accept"}
    host = _host_header_value(handler) or _without_zone(default_host)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"]
    for index, (name, value) in enumerate(handler.http_headers):
        # The rules `apply` checked the spec with (spec_rules): a stored spec passes.
        if not is_http_header_name(name):
            raise ValueError(f"httpHeaders[{index}].name is not a valid HTTP header name")
        if not is_http_header_value(value):
            raise ValueError(f"httpHeaders[{index}].value contains line breaks")
        if name.lower() not in once:
            lines.append(f"{name}: {value}")
    user_agent = first.get("user-agent", USER_AGENT)
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    if "accept" not in first:
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
                        server_hostname: str) -> tuple[str, _Response]:
    loop = asyncio.get_running_loop()
    problems = []
    for host in hosts:
        done = loop.create_future()
        response = _Response()
        exchange = _TlsExchange(request_for(host), response, done)
        try:
            await loop.create_connection(lambda exchange=exchange: exchange, host, port,
                                         ssl=_insecure_tls_context(),
                                         server_hostname=server_hostname)
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

    __slots__ = ("probe", "handler", "server_name", "_requests", "repeatable")

    def __init__(self, probe: spec.Probe) -> None:
        assert isinstance(probe.handler, spec.HttpGet)
        self.probe = probe
        self.handler = probe.handler
        # TLS server name: the Host header's, else the spec's host's (kubelet: the
        # URL's); none for an IP literal, so none for a guest's own addresses.
        self.server_name = _server_name(_host_header_value(self.handler)
                                        or self.handler.host or "")
        self._requests: dict[tuple[str, str, int, str], tuple[bytes, str]] = {}
        # What the last finished run's success may be repeated as (native_lane.py).
        self.repeatable: Recipe | None = None

    def __call__(self, access: GuestAccess, on_done: OnDone) -> Callable:
        return _HttpRun(self, access, on_done).start(self.handler.host)

    def request(self, scheme: str, host: str, port: int, target: str,
                keep: bool = True) -> tuple[bytes, str]:
        """(request bytes, URL) for one target; raises ValueError (see _build_request).
        Kept for the next run unless `keep` is False: a redirect's target is the
        guest's, up to 64 KiB long, and need not stay in memory after its run."""
        key = (scheme, host, port, target)
        found = self._requests.get(key)
        if found is None:
            authority = _authority(host, port, scheme)
            found = (_build_request(self.handler, target, authority),
                     f"{scheme}://{authority}{target}")
            if keep:
                if len(self._requests) > 64:  # guest addresses vary; stay small
                    self._requests.clear()
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
        self.run_in_task(_tls_exchange(hosts, self._url_port, self.request_for,
                                       self._starter.server_name))

    def request_for(self, host: str) -> bytes:
        return self._request(host)[0]

    def _request(self, host: str) -> tuple[bytes, str]:
        return self._starter.request(self._scheme, host, self._url_port, self._target,
                                     keep=not self._redirects)

    def new_sink(self) -> _Response:
        return _Response()

    def exchanged(self, host: str | None, sink: Sink | None,
                  error: BaseException | None) -> None:
        scheme, port = self._scheme, self._url_port
        if isinstance(error, ConnectFailed):
            self.finish(Outcome.FAILURE, f"HTTP GET {scheme} port {port}: {error}")
            return
        if error is not None or host is None or not isinstance(sink, _Response):
            text = describe_os_error(error) if isinstance(error, OSError) else excerpt(error)
            self.finish(Outcome.FAILURE, f"HTTP GET {scheme} port {port}: {text}")
            return
        response = sink
        response.release()
        url = self._request(host)[1]
        status = response.status
        if 300 <= status < 400 and response.location is not None:
            self._redirect(host, url, status, response.location)
            return
        shown = self._shown(url)
        if 200 <= status < 400:
            message = f"HTTP {status} from GET {shown}"
            if status < 300 and self._redirects == 0 and scheme == "http":
                self._starter.repeatable = self.recipe(
                    host, self.request_for(host), status, message)
            self.finish(Outcome.SUCCESS, message)
            return
        # The status only, as kubelet: a body can hold secrets (Kubernetes issue 99425).
        self.finish(Outcome.FAILURE, f"HTTP {status} from GET {shown}")

    def _shown(self, url: str) -> str:
        """`url` for a message: after a redirect its target is the guest's text."""
        return excerpt(url) if self._redirects else url

    def _redirect(self, host: str, url: str, status: int, location: bytes) -> None:
        shown = self._shown(url)
        if self._redirects == MAX_REDIRECTS:
            self.finish(Outcome.FAILURE,
                        f"HTTP GET {shown}: stopped after {MAX_REDIRECTS} redirects")
            return
        try:  # urllib checks the port and IPv6 brackets only when asked for them
            parts = urlsplit(urljoin(url, location.decode("latin-1")))
            hostname, port = parts.hostname or "", parts.port
        except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL"...
            # Go's client fails the request on such a Location; so does the probe.
            self.finish(Outcome.FAILURE,
                        f"HTTP {status} from GET {shown}: redirect to an invalid URL "
                        f"({excerpt(exc, 80)}): {excerpt(location, 120)}")
            return
        if parts.scheme not in DEFAULT_PORTS or not _same_host(hostname, host):
            # Kubelet: not followed, reported as success with a warning.
            self.finish(Outcome.SUCCESS,
                        f"warning: HTTP {status} from GET {shown} redirects to another host "
                        f"({excerpt(hostname, 120)}); not followed, counted as success")
            return
        self._redirects += 1
        self._scheme = parts.scheme
        self._url_port = port or DEFAULT_PORTS[parts.scheme]
        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_PATH_SAFE)
        self._target = target
        self.begin([host])
