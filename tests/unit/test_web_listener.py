"""The read-only web listener on a real 127.0.0.1 port: routes, TLS, basic
authentication, and clients that try to hold it up (slowloris, huge heads)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import logging
import re
import socket
import ssl
import threading
import time

import bcrypt
import pytest
from aiohttp.http_exceptions import LineTooLong
from tests.unit.tls_files import self_signed

from vmhealth.monitor.config import parse_config
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.metrics import CONTENT_TYPE, Metrics
from vmhealth.monitor.web_listener import (
    BasicAuth,
    Limits,
    WebListener,
    _basic_credentials,
    _RefusedRequests,
    web_listener,
)
from vmhealth.monitor.webconfig import load_web_config
from vmhealth.spec import ProbeKind

WAIT = 10.0  # seconds: the bound of every wait-until below
PASSWORD = b"s3cret-scrape"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()  # cost 4: a fast test


class FakeSource:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.metrics.set_healthy("web1", ProbeKind.READINESS, True)
        self.metrics.observe_result("web1", ProbeKind.LIVENESS,
                                    ProbeResult(Outcome.SUCCESS, "", 0.01, 0.0), True)
        self.renders = 0
        render = self.metrics.render

        def counted_render() -> bytes:
            self.renders += 1
            return render()
        self.metrics.render = counted_render  # type: ignore[method-assign]
        self.domains = {
            "web1": {"name": "web1", "ready": True},
            "web2": {"name": "web2", "ready": False, "notReadyReason": "readiness: refused"}}

    def domain_status(self, key):
        return self.domains[key]


class Served:
    """A WebListener on 127.0.0.1 (a free port), its loop in a thread."""

    def __init__(self, **options) -> None:
        self.source = FakeSource()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> WebListener:
            web = WebListener(self.source, "127.0.0.1", 0, **options)
            await web.start()
            return web
        self.web = self.call(start())
        self.port = self.web.port

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def get(self, path="/metrics", *, method="GET", headers=None, context=None,
            source="127.0.0.1") -> tuple[int, http.client.HTTPMessage, bytes]:
        if context is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT,
                                              source_address=(source, 0))
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=WAIT,
                                               source_address=(source, 0), context=context)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.call(self.web.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


def wait_until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def served():
    made: list[Served] = []

    def make(**options) -> Served:
        made.append(Served(**options))
        return made[-1]
    yield make
    for each in made:
        each.close()


def web_config(tmp_path, text: str):
    path = tmp_path / "web.config.yml"
    path.write_text(text)
    return load_web_config(str(path))


def basic(user: str, password: bytes) -> dict[str, str]:
    token = base64.b64encode(user.encode() + b":" + password).decode()
    return {"Authorization": f"Basic {token}"}


def client_context(cafile, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


# --- what it serves, and what not ----------------------------------------------------

def test_serves_metrics_ready_and_healthz(served):
    web = served()
    status, headers, body = web.get("/metrics")
    assert (status, headers["Content-Type"]) == (200, CONTENT_TYPE)
    assert b'vmhealth_probe_healthy{domain="web1",probe="readiness"} 1.0' in body
    assert web.get("/ready/web1")[::2] == (200, b"ready\n")
    assert web.get("/ready/web2")[::2] == (503, b"not ready: readiness: refused\n")
    assert web.get("/ready/nosuch")[::2] == (503, b"not ready: not monitored\n")
    assert web.get("/healthz")[::2] == (200, b"ok\n")
    assert web.get("/metrics", method="HEAD")[0] == 200


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/metrics", 405),
    ("PUT", "/ready/web1", 405),
    ("DELETE", "/healthz", 405),
    ("POST", "/probe/web1/liveness", 404),  # the unix socket's, never here
    ("GET", "/status", 404),
    ("GET", "/status/web1", 404),
    ("GET", "/events?follow=1", 404),
    ("GET", "/", 404),
])
def test_refuses_other_methods_and_paths(served, method, path, expected):
    assert served().get(path, method=method)[0] == expected


def test_metrics_are_rendered_at_most_once_a_second_for_all_scrapers(served):
    now = [100.0]
    web = served(clock=lambda: now[0])
    first = web.get("/metrics")[2]
    assert web.get("/metrics")[2] == first and web.source.renders == 1
    now[0] += 1.0
    web.get("/metrics")
    assert web.source.renders == 2


def test_keep_alive_serves_several_requests_on_one_connection(served):
    web = served()
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=WAIT)
    for path in ("/metrics", "/ready/web1", "/healthz"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    assert web.web.connections == 1
    conn.close()


def test_daemon_configuration_makes_the_listener(tmp_path):
    web_file = tmp_path / "web.config.yml"
    web_file.write_text(f"basic_auth_users:\n  prom: '{HASH}'\n")
    config = parse_config(f"[api]\ntcp_listen = 127.0.0.1:9477\n"
                          f"web_config_file = {web_file}\n")
    listener = web_listener(FakeSource(), config.tcp_address, config.web_config_file)
    assert (listener.host, listener.port, listener.scheme) == ("127.0.0.1", 9477, "http")
    assert listener.auth is not None and set(listener.auth.users) == {"prom"}
    listener.auth.close()


# --- TLS -------------------------------------------------------------------------------

def test_tls_serves_https_and_refuses_plain_http(served, tmp_path):
    cert, key = self_signed(tmp_path)
    web = served(web_config=web_config(
        tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"))
    assert web.web.scheme == "https"
    status, _, body = web.get("/metrics", context=client_context(cert))
    assert status == 200 and b"vmhealth_probe_healthy" in body
    with pytest.raises((http.client.HTTPException, OSError)):
        web.get("/metrics")  # plain HTTP to the TLS port: no answer
    assert web.get("/healthz", context=client_context(cert))[0] == 200


def test_tls_client_certificates_when_required(served, tmp_path):
    cert, key = self_signed(tmp_path)
    client_cert, client_key = self_signed(tmp_path, "scraper")
    web = served(web_config=web_config(tmp_path, (
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {client_cert}\n")))
    assert web.get("/metrics", context=client_context(cert, client_cert, client_key))[0] == 200
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        web.get("/metrics", context=client_context(cert))
    stranger_cert, stranger_key = self_signed(tmp_path, "stranger")
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        web.get("/metrics", context=client_context(cert, stranger_cert, stranger_key))


# --- basic authentication -------------------------------------------------------------

@pytest.fixture
def with_auth(served, tmp_path):
    cert, key = self_signed(tmp_path)
    web = served(web_config=web_config(tmp_path, (
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prom: '{HASH}'\n  other: '{HASH}'\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n")))
    context = client_context(cert)

    def get(path="/metrics", **options):
        return web.get(path, context=context, **options)
    return get


def test_right_password_is_200(with_auth):
    status, headers, body = with_auth(headers=basic("prom", PASSWORD))
    assert status == 200 and b"vmhealth_probe_healthy" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert with_auth(headers=basic("prom", PASSWORD))[0] == 200  # remembered, same answer


@pytest.mark.parametrize("headers", [
    {},
    basic("prom", b"wrong"),
    basic("prom", b""),
    basic("nobody", PASSWORD),  # a user not configured, with a configured password
    basic("prom", PASSWORD + b"\0"),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Bearer " + base64.b64encode(b"prom:" + PASSWORD).decode()},
    {"Authorization": "Basic " + base64.b64encode(b"prom" + PASSWORD).decode()},  # no colon
], ids=["none", "wrong", "empty", "unknown-user", "nul", "bad-base64", "bearer", "no-colon"])
def test_missing_or_wrong_credentials_are_401(with_auth, headers):
    status, answer_headers, _ = with_auth(headers=headers)
    assert status == 401
    assert answer_headers["WWW-Authenticate"] == 'Basic realm="vmhealth"'
    assert answer_headers["X-Content-Type-Options"] == "nosniff"


def test_authentication_comes_before_routing(with_auth):
    assert with_auth("/status")[0] == 401
    assert with_auth("/metrics", method="POST")[0] == 401
    assert with_auth("/status", headers=basic("prom", PASSWORD))[0] == 404
    assert with_auth("/metrics", method="POST", headers=basic("prom", PASSWORD))[0] == 405


def test_password_checks_beyond_the_limit_are_429_not_queued():
    async def scenario():
        auth = BasicAuth({"prom": HASH.encode()}, pending_limit=1)
        try:
            right = basic("prom", PASSWORD)["Authorization"]
            assert await auth.check(right) == "ok"
            auth._pending_limit = 0  # every bcrypt slot taken
            assert await auth.check(right) == "ok"  # remembered: no bcrypt needed
            assert await auth.check(basic("prom", b"guess")["Authorization"]) == "busy"
        finally:
            auth.close()
    asyncio.run(scenario())


def test_hashes_in_htpasswd_2y_form_are_accepted(served, tmp_path):
    web = served(web_config=web_config(
        tmp_path, f"basic_auth_users:\n  prom: '$2y${HASH[4:]}'\n"))
    assert web.get(headers=basic("prom", PASSWORD))[0] == 200
    assert web.get(headers=basic("prom", b"wrong"))[0] == 401


@pytest.mark.parametrize("header, expected", [
    ("Basic " + base64.b64encode(b"a:b:c").decode(), (b"a:b:c", "a", b"b:c")),
    ("basic  " + base64.b64encode(b"a:").decode(), (b"a:", "a", b"")),
    ("Basic " + base64.b64encode(b"\xff:x").decode(), None),
    (None, None),
    ("", None),
])
def test_basic_credentials_parsing(header, expected):
    assert _basic_credentials(header) == expected


# --- clients that try to hold it up ------------------------------------------------------

def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(WAIT)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_slowloris_neither_stalls_other_scrapers_nor_stays(served):
    web = served(limits=Limits(head_timeout=1.0, max_per_address=4))
    slow = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(6)]
    stop = threading.Event()

    def dribble():  # one byte of head now and then, never the blank line
        while not stop.wait(0.1):
            for sock in slow:
                try:
                    sock.send(b"X")
                except OSError:
                    pass
    for sock in slow:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: vmhealth\r\nX-Slow: ")
    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        wait_until(lambda: web.web.refused == 2, "the connections beyond the cap refused")
        assert web.web.connections == 4
        # Another client (another address) is served while the slow ones hold their slots.
        assert web.get("/metrics", source="127.0.0.2")[0] == 200
        # Dribbling does not move the deadline: every slow connection is cut.
        wait_until(lambda: web.web.connections == 0, "the slow connections aborted")
        assert all(closed_by_server(sock) for sock in slow)
    finally:
        stop.set()
        dribbler.join(WAIT)
        for sock in slow:
            sock.close()
    assert web.get("/metrics")[0] == 200  # the slow client's address may come back


def test_silent_connection_is_cut_after_the_head_timeout(served):
    web = served(limits=Limits(head_timeout=0.5))
    with socket.create_connection(("127.0.0.1", web.port)) as silent:
        wait_until(lambda: web.web.connections == 1, "the connection admitted")
        assert closed_by_server(silent)
        wait_until(lambda: web.web.connections == 0, "the connection released")


def test_idle_keep_alive_connection_is_cut_after_the_idle_timeout(served):
    # The same deadline cuts a response its client does not read.
    web = served(limits=Limits(idle_timeout=0.5))
    with socket.create_connection(("127.0.0.1", web.port)) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: vmhealth\r\n\r\n")
        idle.settimeout(WAIT)
        assert idle.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert closed_by_server(idle)
        wait_until(lambda: web.web.connections == 0, "the connection released")


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing to read, no end of stream
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return False


def test_stalled_tls_handshakes_neither_stall_scrapers_nor_stay(served, tmp_path):
    """Before TLS is up there is no request head to time: the handshake has a deadline
    of its own (head_timeout), for a client that sends nothing and one that sends the
    first bytes of a ClientHello and no more."""
    cert, key = self_signed(tmp_path)
    web = served(limits=Limits(head_timeout=3.0), web_config=web_config(
        tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"))
    silent = socket.create_connection(("127.0.0.1", web.port))
    partial = socket.create_connection(("127.0.0.1", web.port))
    partial.sendall(b"\x16\x03\x01\x02\x00\x01")  # a record header, a byte of hello
    try:
        assert web.get("/metrics", context=client_context(cert))[0] == 200
        # Served while both handshakes were still waiting (the server had closed neither).
        assert still_open(silent) and still_open(partial)
        assert closed_by_server(silent) and closed_by_server(partial)
        assert web.get("/healthz", context=client_context(cert))[0] == 200
    finally:
        silent.close()
        partial.close()


def test_pending_tls_handshakes_count_against_the_caps(served, tmp_path):
    """A connection is counted from its accept, not from the end of its handshake: one
    address opening handshakes it never finishes holds at most max_per_address slots
    (file descriptors), the rest are closed at once, and another address is served."""
    cert, key = self_signed(tmp_path)
    web = served(limits=Limits(head_timeout=30.0, max_connections=8, max_per_address=2),
                 web_config=web_config(
                     tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"))
    silent = [socket.create_connection(("127.0.0.1", web.port)) for _ in range(6)]
    try:
        wait_until(lambda: web.web.refused == 4, "the handshakes beyond the cap refused")
        assert web.web.connections == 2
        assert sum(still_open(sock) for sock in silent) == 2
        assert web.get("/metrics", source="127.0.0.2", context=client_context(cert))[0] == 200
    finally:
        for sock in silent:
            sock.close()
    # Closed by the client mid-handshake: the slots come back.
    wait_until(lambda: web.web.connections == 0, "the handshake slots released")
    assert web.get("/metrics", context=client_context(cert))[0] == 200


def test_huge_header_is_400_and_stalls_nobody(served):
    web = served()
    with socket.create_connection(("127.0.0.1", web.port)) as huge:
        huge.sendall(b"GET /metrics HTTP/1.1\r\nHost: vmhealth\r\nX-Huge: " + b"a" * 8192
                     + b"\r\n\r\n")
        assert web.get("/metrics")[0] == 200
        huge.settimeout(WAIT)
        assert re.match(rb"HTTP/1\.[01] 400 ", huge.recv(4096))


def test_too_many_header_lines_are_400(served):
    web = served()
    lines = b"".join(b"X-H%d: v\r\n" % n for n in range(100))
    with socket.create_connection(("127.0.0.1", web.port)) as many:
        many.sendall(b"GET /metrics HTTP/1.1\r\nHost: vmhealth\r\n" + lines + b"\r\n")
        many.settimeout(WAIT)
        assert re.match(rb"HTTP/1\.[01] 400 ", many.recv(4096))


def test_endless_header_stream_is_cut_while_others_scrape(served):
    web = served()
    ended: list[BaseException | None] = []
    sock = socket.create_connection(("127.0.0.1", web.port))

    def flood():  # as fast as it can, without end
        try:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Endless: ")
            while True:
                sock.sendall(b"a" * 65536)
        except OSError as exc:
            ended.append(exc)
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        assert web.get("/metrics")[0] == 200
        flooder.join(WAIT)
        assert ended, "the server kept reading an endless header"
    finally:
        sock.close()


def test_malformed_requests_are_logged_without_their_bytes_once_a_minute():
    now = [0.0]
    refused = _RefusedRequests(clock=lambda: now[0])

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("vmhealth.web.requests", logging.ERROR, __file__, 1,
                                 "Error handling request from %s", ("10.0.0.9",),
                                 (type(error), error, None))
    huge = LineTooLong(b"X-Huge: " + b"\x1b]0;owned\x07" * 10, 4096)
    first = record(huge)
    assert refused.filter(first)
    assert (first.levelno, first.exc_info) == (logging.WARNING, None)
    assert first.getMessage() == ("web listener: refused a malformed request (HTTP 400); "
                                  "0 more since the last such line")
    now[0] += 30
    assert not refused.filter(record(huge)) and not refused.filter(record(huge))
    now[0] += 30
    again = record(huge)
    assert refused.filter(again) and "2 more since" in again.getMessage()
    ours = record(RuntimeError("a bug of ours"))
    assert refused.filter(ours) and ours.exc_info is not None  # passes as it is


def test_a_huge_header_never_reaches_the_log(served, caplog):
    web = served()
    with caplog.at_level(logging.DEBUG), \
            socket.create_connection(("127.0.0.1", web.port)) as huge:
        huge.sendall(b"GET / HTTP/1.1\r\nX-Huge: " + b"Q" * 8192 + b"\r\n\r\n")
        huge.settimeout(WAIT)
        assert huge.recv(4096)
    assert "QQQQ" not in caplog.text
