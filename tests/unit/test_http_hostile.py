"""The httpGet handler against hostile guests: servers on 127.0.0.1 that answer with
endless or huge heads, endless trailers, bad redirects and secrets in bodies.

Guests are untrusted: whatever one sends, its probe ends with a verdict within
timeoutSeconds and nothing it sends can hold the event loop (docs/probes.md,
"Hostile guests"). The servers run in threads with blocking sockets, so they keep
sending while the probe's event loop works; each test bounds what they send, so a
handler without the limits ends in a timeout (a wrong verdict), not a hung test.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable

import pytest
from tests.unit.test_probes import FakeAccess, needs_ipv6, probe_of, self_signed_context

from vmhealth import spec
from vmhealth.excerpt import excerpt
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.probes import run_once, run_probe, starter_for
from vmhealth.monitor.probes.http import MAX_HEAD_BYTES, USER_AGENT

WAIT = 30.0  # the most any probe here may take on a loaded machine (a hung test otherwise)
FLOOD_BYTES = 16 * 1024 * 1024  # what a flooding server sends at most, then it holds
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Script = Callable[[socket.socket, bytes], None]  # (connection, request head)


class HostileServer:
    """Answers every connection on 127.0.0.1 with `script(conn)`, in a thread of its own,
    after reading the request head (kept in `requests`). With `tls`, over TLS, the
    server names the client sent (SNI) kept in `server_names`."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> None:
        self.script = script
        self.tls = tls
        self.requests: list[bytes] = []
        self.server_names: list[str | None] = []
        if tls is not None:
            tls.sni_callback = self._sni
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _sni(self, _sslobj, name, _context) -> None:
        self.server_names.append(name)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the 0.1 s poll for _stop, or closed
                continue
            thread = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = read_request_head(conn)
            if not head:
                return
            self.requests.append(head)
            self.script(conn, head)
        except (OSError, ssl.SSLError):
            pass  # the probe reset the connection: what a probe does when it has enough
        finally:
            conn.close()

    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        self.sock.close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_request_head(conn: socket.socket) -> bytes:
    """The request's head, at most 64 KiB; b"" when the probe closed before its end."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        head += chunk
    return head


def hold(conn: socket.socket) -> None:
    """Keep the connection open until the probe ends it (or 10 s)."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass


def flood(prefix: bytes, filler: bytes, limit: int = FLOOD_BYTES) -> Script:
    """Send `prefix`, then `filler` again and again up to `limit` bytes, then hold."""
    def script(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(prefix)
        block = filler * max(1, 65536 // len(filler))
        sent = 0
        while sent < limit:
            conn.sendall(block)
            sent += len(block)
        hold(conn)
    return script


def answer(data: bytes, *, then_hold: bool = False) -> Script:
    def script(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(data)
        if then_hold:
            hold(conn)
    return script


def probe(server: HostileServer, timeout: float = 2.0, **handler: object) -> ProbeResult:
    handler.setdefault("port", server.port)
    http_get = spec.HttpGet(**handler)  # type: ignore[arg-type]
    access = FakeAccess(addrs=[handler.get("host") or "127.0.0.1"])  # type: ignore[list-item]

    async def bounded() -> ProbeResult:
        return await asyncio.wait_for(run_probe(probe_of(http_get, timeout), access), WAIT)

    return asyncio.run(bounded())


# ---------------------------------------------------------------------------
# The head is bounded: status line and headers end within MAX_HEAD_BYTES
# ---------------------------------------------------------------------------

HEAD_TOO_BIG = f"status line and headers over {MAX_HEAD_BYTES // 1024} KiB"


def test_an_endless_header_value_is_a_failure_naming_the_limit():
    with HostileServer(flood(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a")) as server:
        result = probe(server)
    assert result.outcome is Outcome.FAILURE
    assert HEAD_TOO_BIG in result.message, result.message


def test_endless_small_headers_are_a_failure_naming_the_limit():
    with HostileServer(flood(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n")) as server:
        result = probe(server)
    assert result.outcome is Outcome.FAILURE
    assert HEAD_TOO_BIG in result.message, result.message


def test_endless_interim_answers_count_against_the_head_limit():
    with HostileServer(flood(b"", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")) as server:
        result = probe(server)
    assert result.outcome is Outcome.FAILURE
    assert HEAD_TOO_BIG in result.message, result.message


@pytest.mark.parametrize("extra, outcome", [(0, Outcome.SUCCESS), (1, Outcome.FAILURE)])
def test_a_head_of_exactly_the_limit_is_read_one_byte_more_is_not(extra, outcome):
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
    end = b"\r\n\r\n"
    head = start + b"p" * (MAX_HEAD_BYTES - len(start) - len(end) + extra) + end
    assert len(head) == MAX_HEAD_BYTES + extra
    with HostileServer(answer(head + b"ok", then_hold=True)) as server:
        result = probe(server)
    assert result.outcome is outcome, result.message


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("prefix, filler", [
    (b"2\r\nok\r\n0\r\nX-T: ", b"t"),  # one endless trailer
    (b"1;x=", b"e"),  # one endless chunk extension
    (b"", b"1\r\nx\r\n"),  # 1-byte chunks: 10 KiB of body ends the read
])
def test_after_the_head_chunk_framing_is_bounded_too(status, prefix, filler):
    head = f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with HostileServer(flood(head + prefix, filler)) as server:
        result = probe(server)
    if filler == b"1\r\nx\r\n":  # a real body, capped at 10 KiB: the status decides
        assert (result.outcome is Outcome.SUCCESS) == (status == 200), result.message
        assert f"HTTP {status} from GET" in result.message
    else:  # junk: Go's client fails it too
        assert result.outcome is Outcome.FAILURE
        assert "KiB of chunk framing or trailers after the headers" in result.message


def test_over_tls_an_endless_header_value_is_a_failure_naming_the_limit(tmp_path):
    tls = self_signed_context(tmp_path)
    with HostileServer(flood(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a"), tls=tls) as server:
        result = probe(server, scheme=spec.Scheme.HTTPS)
    assert result.outcome is Outcome.FAILURE
    assert HEAD_TOO_BIG in result.message, result.message


# ---------------------------------------------------------------------------
# Redirects the handler cannot follow are FAILUREs with a bounded message
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("location", [
    b"http://127.0.0.1:99999/", b"http://[::1/", b"http://127.0.0.1:-1/", b"http://127.0.0.1:x/"])
def test_a_redirect_to_an_invalid_url_is_a_failure(location):
    reply = b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
    with HostileServer(answer(reply)) as server:
        result = probe(server)
    assert result.outcome is Outcome.FAILURE, result.message
    assert "redirect to an invalid URL" in result.message, result.message


def test_a_redirect_to_a_huge_host_name_is_reported_bounded():
    location = b"http://" + b"h" * 60000 + b"/"
    reply = b"HTTP/1.1 301 Moved\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
    with HostileServer(answer(reply)) as server:
        result = probe(server)
    assert result.outcome is Outcome.SUCCESS  # another host: kubelet's warning
    assert "warning" in result.message and "hhhh" in result.message
    assert len(result.message) < 600 and result.message.isprintable()


def test_a_followed_redirect_to_a_huge_path_is_reported_bounded():
    def script(conn: socket.socket, request: bytes) -> None:
        target = b"/" + b"p" * 30000
        if request.startswith(b"GET / "):
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + target + b"\r\n"
                         b"Content-Length: 0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")

    with HostileServer(script) as server:
        result = probe(server)
    assert len(server.requests) == 2  # the redirect was followed
    assert result.outcome is Outcome.FAILURE and "HTTP 500" in result.message
    assert len(result.message) < 600, result.message


def test_redirect_targets_are_not_kept_after_their_run():
    def script(conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET / "):
            target = b"/" + b"p" * 60000 + b"/%d" % len(request)
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + target + b"\r\n\r\n")
        else:
            conn.sendall(OK)

    async def three_runs(port: int) -> dict:
        starter = starter_for(probe_of(spec.HttpGet(port=port), 2.0))
        for _ in range(3):
            result = await asyncio.wait_for(run_once(starter, FakeAccess()), WAIT)
            assert result.outcome is Outcome.SUCCESS, excerpt(result.message)
        return starter._requests

    with HostileServer(script) as server:
        kept = asyncio.run(three_runs(server.port))
    assert [key[3] for key in kept] == ["/"]  # a guest's 60 KiB targets are not cached


# ---------------------------------------------------------------------------
# Kubelet's details: interim answers, no body in messages, headers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
])
@pytest.mark.parametrize("final, outcome", [
    (OK, Outcome.SUCCESS),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", Outcome.FAILURE)])
def test_interim_answers_are_skipped(interim, final, outcome):
    with HostileServer(answer(interim + final)) as server:
        result = probe(server)
    assert result.outcome is outcome, result.message
    assert f"HTTP {final[9:12].decode()} from GET" in result.message


def test_an_interim_answer_sent_apart_from_the_final_one_is_skipped():
    def script(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    with HostileServer(script) as server:
        result = probe(server)
    assert result.outcome is Outcome.SUCCESS, result.message
    assert "HTTP 204" in result.message


def test_an_interim_answers_location_is_not_a_redirect():
    reply = (b"HTTP/1.1 103 Early Hints\r\nLocation: /elsewhere\r\n\r\n"
             b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")
    with HostileServer(answer(reply)) as server:
        result = probe(server)
    assert len(server.requests) == 1
    assert result.outcome is Outcome.SUCCESS and "HTTP 302" in result.message


def test_switching_protocols_is_a_final_answer_and_a_failure():
    reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    with HostileServer(answer(reply, then_hold=True)) as server:
        result = probe(server)
    assert result.outcome is Outcome.FAILURE
    assert "HTTP 101" in result.message, result.message


def test_bytes_after_a_complete_answer_do_not_change_the_verdict():
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokGARBAGE"
    with HostileServer(answer(reply)) as server:
        result = probe(server)
    assert result.outcome is Outcome.SUCCESS, result.message


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 25\r\n\r\npassword=hunter2 db=prod1",
    b"HTTP/1.0 403 Forbidden\r\n\r\npassword=hunter2 db=prod1",
])
def test_the_body_never_reaches_the_message(reply):
    # Kubernetes issue 99425: probe bodies can hold secrets; kubelet reports the status.
    with HostileServer(answer(reply)) as server:
        result = probe(server)
    assert result.outcome is Outcome.FAILURE
    assert "hunter2" not in result.message and "prod1" not in result.message
    assert result.message == f"HTTP {reply[9:12].decode()} from GET http://127.0.0.1:{server.port}/"


def sent_headers(request: bytes) -> list[tuple[str, str]]:
    lines = request.decode("latin-1").split("\r\n")[1:]
    return [(name.lower(), value) for name, _, value in
            (line.partition(": ") for line in lines if line)]


def request_for(headers: tuple[tuple[str, str], ...], **handler: object) -> list[tuple[str, str]]:
    with HostileServer(answer(OK)) as server:
        result = probe(server, http_headers=headers, **handler)
    assert result.outcome is Outcome.SUCCESS, result.message
    return sent_headers(server.requests[0])


def test_an_empty_accept_removes_the_header():
    sent = request_for((("Accept", ""),))
    assert [name for name, _ in sent if name == "accept"] == []


def test_user_agent_is_ours_unless_given_and_never_twice():
    assert [v for n, v in request_for(()) if n == "user-agent"] == [USER_AGENT]
    given = request_for((("user-AGENT", "lb-check/2"),))
    assert [v for n, v in given if n == "user-agent"] == ["lb-check/2"]


def test_an_empty_user_agent_sends_none():
    # Go's client (kubelet's) sends no User-Agent when the given value is empty.
    assert [n for n, _ in request_for((("User-Agent", ""),)) if n == "user-agent"] == []


def test_one_host_header_the_first_given():
    sent = request_for((("Host", "a.example"), ("Host", "b.example")))
    assert [v for n, v in sent if n == "host"] == ["a.example"]


def test_an_empty_host_header_means_the_default_host():
    with HostileServer(answer(OK)) as server:
        probe(server, http_headers=(("Host", ""),))
    host = [v for n, v in sent_headers(server.requests[0]) if n == "host"]
    assert host == [f"127.0.0.1:{server.port}"]


@pytest.mark.parametrize("given, sent", [
    ("::1", "[::1]"), ("[::1]", "[::1]"), ("[::1]:8080", "[::1]:8080"),
    ("fe80::1%eth0", "[fe80::1]"), ("app.example:8080", "app.example:8080")])
def test_an_ipv6_literal_host_header_is_bracketed(given, sent):
    assert [v for n, v in request_for((("Host", given),)) if n == "host"] == [sent]


@pytest.mark.parametrize("given, server_name, host", [
    ("::1", None, "[::1]"), ("[::1]:8443", None, "[::1]:8443"), ("10.9.9.9", None, "10.9.9.9"),
    ("app.example", "app.example", "app.example"),
    ("app.example:8443", "app.example", "app.example:8443")])
def test_https_sends_sni_for_names_only(tmp_path, given, server_name, host):
    tls = self_signed_context(tmp_path)
    with HostileServer(answer(OK), tls=tls) as server:
        result = probe(server, scheme=spec.Scheme.HTTPS, http_headers=(("Host", given),))
    assert result.outcome is Outcome.SUCCESS, result.message
    assert server.server_names == [server_name]
    assert [v for n, v in sent_headers(server.requests[0]) if n == "host"] == [host]


@needs_ipv6
def test_https_to_an_ipv6_guest_with_an_ipv6_host_header(tmp_path):
    tls = self_signed_context(tmp_path)
    try:
        server = HostileServer(answer(OK), tls=tls, host="::1")
    except OSError:
        pytest.skip("no ::1 on this host")
    with server:
        result = probe(server, scheme=spec.Scheme.HTTPS, host="::1",
                       http_headers=(("Host", "::1"),))
    assert result.outcome is Outcome.SUCCESS, result.message
    assert server.server_names == [None]
    assert f"https://[::1]:{server.port}/" in result.message
