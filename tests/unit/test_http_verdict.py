"""The httpGet verdict in its details (written for mutation testing, docs/testing.md):
the answer's parser and its limits, the end of a TLS exchange, redirects and the
exact messages they give."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

import pytest
from tests.unit.probe_support import (
    FakeAccess,
    Route,
    free_port,
    http_probe,
    probe_against,
    probe_of,
    run,
    start_http,
)

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.probes import run_probe, starter_for
from vmhealth.monitor.probes.http import (
    MAX_HEAD_BYTES,
    USER_AGENT,
    HttpProbeStarter,
    InvalidResponse,
    _authority,
    _build_request,
    _Response,
    _same_host,
    _server_name,
    _split_host_port,
    _TlsExchange,
    _without_zone,
)

HEAD_LIMIT = "invalid HTTP response (status line and headers over 64 KiB)"
AFTER_LIMIT = ("invalid HTTP response (over 64 KiB of chunk framing or trailers after the "
               "headers)")


def answer(status: int = 200, headers: str = "", body: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            .encode() + body)


def padded_head(size: int, content_length: int) -> bytes:
    """A 200 head of exactly `size` bytes announcing `content_length` bytes of body."""
    start = f"HTTP/1.1 200 OK\r\nContent-Length: {content_length}\r\nX-Pad: ".encode()
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


# -- the parser ----------------------------------------------------------------

def test_a_whole_answer_in_one_piece():
    response = _Response()
    assert response.feed(answer(204)) is True
    assert (response.status, response.location, response.headers_complete) == (204, None, True)


def test_an_answer_in_pieces_is_complete_only_at_its_end():
    response = _Response()
    data = answer(200, body=b"hello")
    assert [response.feed(data[i:i + 1]) for i in range(len(data))] == (
        [False] * (len(data) - 1) + [True])
    assert response.status == 200


def test_the_location_of_the_final_answer_only():
    response = _Response()
    data = (b"HTTP/1.1 103 Early Hints\r\nLocation: /early\r\n\r\n"
            + answer(302, "LOCATION: /final\r\n"))
    assert response.feed(data) is True
    assert (response.status, response.location) == (302, b"/final")
    interim_only = _Response()
    assert interim_only.feed(b"HTTP/1.1 103 Early Hints\r\nLocation: /early\r\n\r\n"
                             + answer(200)) is True
    assert (interim_only.status, interim_only.location) == (200, None)


def test_a_trailer_named_location_is_not_a_redirect():
    response = _Response()
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nok\r\n0\r\nLocation: /elsewhere\r\n\r\n")
    assert response.feed(chunked) is True
    assert (response.status, response.location) == (200, None)


def test_an_eof_delimited_body_ends_with_the_connection():
    response = _Response()
    assert response.feed(b"HTTP/1.1 200 OK\r\n\r\nbody without a length") is False
    response.end_of_stream()
    assert response.complete is True and response.status == 200


def test_the_connection_closed_before_the_head_is_invalid():
    response = _Response()
    response.feed(b"HTTP/1.1 200 OK\r\nContent-")
    with pytest.raises(InvalidResponse) as caught:
        response.end_of_stream()
    assert str(caught.value) == "connection closed before a complete response"
    assert response.complete is False


TRUNCATED = "connection closed before the end of the body"


@pytest.mark.parametrize("head,error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", TRUNCATED),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n", TRUNCATED),
    (b"HTTP/1.1 200 OK\r\nLocation: /x\r\nContent-Length: 10\r\n\r\nhalf", TRUNCATED),
    (b"HTTP/1.1 302 Found\r\nContent-Length: 10\r\n\r\nhalf", TRUNCATED),
    (b"HTTP/1.1 400 Bad\r\nLocation: /x\r\nContent-Length: 10\r\n\r\nhalf", TRUNCATED),
    # A redirect's body is drained and its end does not matter (as in Go's client).
    (b"HTTP/1.1 300 Choices\r\nLocation: /x\r\nContent-Length: 10\r\n\r\nhalf", None),
    (b"HTTP/1.1 399 X\r\nLocation: /x\r\nContent-Length: 10\r\n\r\nhalf", None),
    # Without a length the body ends with the connection.
    (b"HTTP/1.1 200 OK\r\n\r\nhalf", None),
])
def test_the_connection_closed_inside_a_framed_body_is_a_truncated_answer(head, error):
    response = _Response()
    assert response.feed(head) is False
    if error is None:
        response.end_of_stream()
        assert response.complete is True
        return
    with pytest.raises(InvalidResponse) as caught:
        response.end_of_stream()
    assert str(caught.value) == error


def test_the_end_of_the_stream_after_a_complete_answer_is_no_error():
    response = _Response()
    assert response.feed(answer(200, body=b"whole")) is True
    response.end_of_stream()
    assert response.complete is True


def test_garbage_is_invalid_and_names_the_parsers_complaint():
    with pytest.raises(InvalidResponse) as caught:
        _Response().feed(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert str(caught.value) == "invalid HTTP response (Expected HTTP/, RTSP/ or ICE/)"


def test_only_a_length_or_chunked_transfer_frames_the_body():
    response = _Response()
    response.feed(b"HTTP/1.1 200 OK\r\nX-Mode: chunked\r\nTransfer-Encoding: identity"
                  b"\r\n\r\nuntil the end")
    response.end_of_stream()  # an EOF-delimited body: complete
    assert response.complete is True


def test_an_interim_answers_length_does_not_frame_the_final_body():
    response = _Response()
    response.feed(b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    response.end_of_stream()
    assert response.complete is True and response.status == 200


def test_a_head_that_fills_the_limit_exactly_fails_only_at_the_next_byte():
    unfinished = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES
    response = _Response()
    assert response.feed(unfinished[:MAX_HEAD_BYTES]) is False
    with pytest.raises(InvalidResponse) as caught:
        response.end_of_stream()
    assert str(caught.value) == "connection closed before a complete response"
    response = _Response()
    response.feed(unfinished[:MAX_HEAD_BYTES])
    with pytest.raises(InvalidResponse) as caught:
        response.feed(b"a")
    assert str(caught.value) == HEAD_LIMIT


def test_bytes_after_a_complete_answer_change_nothing():
    response = _Response()
    assert response.feed(answer(200) + b"\x00garbage\r\n\r\n") is True
    assert response.status == 200


def test_at_most_10_kib_of_body_is_read():
    short = _Response()
    assert short.feed(answer(200, body=b"x" * 20000)[:-20000] + b"x" * 10239) is False
    assert short.feed(b"x") is True
    assert short.status == 200


@pytest.mark.parametrize("size,complete", [(MAX_HEAD_BYTES, True),
                                           (MAX_HEAD_BYTES + 1, None)])
def test_the_head_limit_in_one_piece(size, complete):
    response = _Response()
    data = padded_head(size, 0)
    if complete:
        assert response.feed(data) is True
        return
    with pytest.raises(InvalidResponse) as caught:
        response.feed(data)
    assert str(caught.value) == HEAD_LIMIT


def test_an_answer_complete_within_the_head_limit_ignores_what_follows_in_the_piece():
    response = _Response()
    assert response.feed(padded_head(1000, 0) + b"z" * MAX_HEAD_BYTES) is True
    assert response.status == 200


def test_a_body_that_straddles_the_head_limit_is_read_on():
    # The head ends 100 bytes before the limit; its 2,000 bytes of body arrive in the
    # same piece: the part beyond the limit is parsed against the new room.
    response = _Response()
    assert response.feed(padded_head(MAX_HEAD_BYTES - 100, 2000) + b"b" * 2000) is True
    assert response.status == 200


def test_framing_after_the_head_is_limited_too():
    response = _Response()
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert response.feed(head) is False
    with pytest.raises(InvalidResponse) as caught:
        response.feed(b"1;" + b"e" * (70 * 1024))
    assert str(caught.value) == AFTER_LIMIT


# -- a TLS exchange's end ---------------------------------------------------------

class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted += 1


def exchange() -> tuple[_TlsExchange, asyncio.Future, Transport]:
    loop = asyncio.new_event_loop()
    done = loop.create_future()
    tls = _TlsExchange(b"GET / HTTP/1.1\r\n\r\n", _Response(), done)
    transport = Transport()
    tls.connection_made(transport)
    loop.close()
    return tls, done, transport


def test_a_tls_exchange_sends_the_request_and_ends_at_a_complete_answer():
    tls, done, transport = exchange()
    assert transport.written == [b"GET / HTTP/1.1\r\n\r\n"]
    tls.data_received(answer(200))
    assert done.result() is None and transport.aborted == 1
    tls.data_received(b"more")  # after the end: ignored
    tls.connection_lost(None)
    assert done.result() is None


def test_a_tls_exchange_ended_early_reports_the_connection_error_first():
    tls, done, _ = exchange()
    tls.connection_lost(ConnectionResetError("reset by peer"))
    assert isinstance(done.exception(), ConnectionResetError)
    tls, done, _ = exchange()
    tls.connection_lost(None)
    assert str(done.exception()) == "connection closed before a complete response"
    tls, done, _ = exchange()
    tls.data_received(b"HTTP/1.1 200 OK\r\n\r\nEOF-delimited")
    assert not done.done()
    assert tls.eof_received() is False  # our side closes too
    tls.connection_lost(None)
    assert done.result() is None


def test_a_tls_exchange_with_garbage_is_invalid():
    tls, done, transport = exchange()
    tls.data_received(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert isinstance(done.exception(), InvalidResponse) and transport.aborted == 1


def test_a_tls_exchange_that_never_connected_can_be_aborted():
    loop = asyncio.new_event_loop()
    try:
        _TlsExchange(b"", _Response(), loop.create_future()).abort()
    finally:
        loop.close()


def test_https_names_every_address_that_refused():
    port = free_port()
    handler = spec.HttpGet(port=port, scheme=spec.Scheme.HTTPS)
    result = run(run_probe(probe_of(handler), FakeAccess(addrs=["127.0.0.1", "127.0.0.2"])))
    assert (result.outcome, result.message) == (
        Outcome.FAILURE, f"HTTP GET https port {port}: 127.0.0.1:{port}: connection refused; "
                         f"127.0.0.2:{port}: connection refused")


# -- redirects ----------------------------------------------------------------------

@pytest.mark.parametrize("a,b,same", [
    ("example.com", "example.com", True), ("Example.COM", "example.com", True),
    ("example.com", "EXAMPLE.com", True), ("[::1]", "::1", True), ("::1", "[::1]", True),
    ("Xa", "xa", True), ("xa", "Xa", True), ("a", "b", False), ("[::1]", "::2", False),
])
def test_same_host_ignores_case_and_ipv6_brackets(a, b, same):
    assert _same_host(a, b) is same


def redirect(location: str, routes=None):
    return run(http_probe({"/": Route(302, b"", (("Location", location),)), **(routes or {})}))


def test_a_redirect_loop_names_the_last_url():
    result, state = redirect("/")
    assert result.message == (f"HTTP GET http://127.0.0.1:{state.port}/: stopped after 10 "
                              "redirects")


def test_a_redirect_without_a_host_is_to_another_host():
    result, state = redirect("https:///elsewhere")
    assert (result.outcome, result.message) == (
        Outcome.SUCCESS, f"warning: HTTP 302 from GET http://127.0.0.1:{state.port}/ "
                         "redirects to another host (); not followed, counted as success")


def test_a_redirect_to_another_host_shows_at_most_120_characters_of_its_name():
    host = "h" * 300 + ".example"
    result, state = redirect(f"http://{host}/")
    shown = re.search(r"another host \((.*)\); not followed", result.message).group(1)
    assert shown == "h" * 120 + "..."
    assert result.message.startswith(
        f"warning: HTTP 302 from GET http://127.0.0.1:{state.port}/ redirects")


def test_an_invalid_redirect_shows_bounded_excerpts_of_the_error_and_the_location():
    location = "http://127.0.0.1:" + "9" * 300 + "x/"
    result, state = redirect(location)
    match = re.fullmatch(
        rf"HTTP 302 from GET http://127\.0\.0\.1:{state.port}/: redirect to an invalid URL "
        r"\((.*)\): (.*)", result.message)
    assert match, result.message
    error, shown = match.groups()
    assert len(error) == 83 and error.endswith("...") and "Port" in error
    assert shown == location[:120] + "..."
    assert result.outcome is Outcome.FAILURE


def test_a_followed_redirect_keeps_the_characters_a_path_may_hold():
    path = "/a:b@c!$&'()*+,;=-._~"
    result, state = redirect(path + "?q=a:b/c", {"/a:b@c!$&'()*+,;=-._~": Route(200)})
    assert [target for target, _ in state.requests] == ["/", path + "?q=a:b/c"]
    assert result.message == (f"HTTP 200 from GET http://127.0.0.1:{state.port}{path}"
                              "?q=a:b/c")


def test_a_redirect_to_the_bare_authority_requests_the_root():
    async def scenario():
        state, server = await start_http({"/": Route(200)})
        state.routes["/start"] = Route(302, b"", (
            ("Location", f"http://127.0.0.1:{state.port}?x=1"),))
        try:
            handler = spec.HttpGet(port=state.port, path="/start")
            return await run_probe(probe_of(handler), FakeAccess()), state
        finally:
            server.close()
    result, state = run(scenario())
    assert [target for target, _ in state.requests] == ["/start", "/?x=1"]
    assert result.outcome is Outcome.SUCCESS


def test_a_redirect_is_any_3xx_with_a_location_and_only_that():
    for status, outcome in ((300, Outcome.FAILURE), (399, Outcome.FAILURE),
                            (400, Outcome.FAILURE), (301, Outcome.FAILURE)):
        routes = {"/": Route(status, b"", (("Location", "/next"),)), "/next": Route(500)}
        result, state = run(http_probe(routes))
        followed = [target for target, _ in state.requests] == ["/", "/next"]
        assert followed is (status != 400), (status, state.requests)
        assert result.outcome is outcome
        assert result.message.startswith("HTTP 500" if followed else "HTTP 400")


def test_a_success_is_repeatable_only_below_300_and_without_redirects():
    async def scenario():
        state, server = await start_http({"/ok": Route(299), "/more": Route(300),
                                           "/moved": Route(302, b"", (("Location", "/ok"),))})
        try:
            recipes = {}
            for path in ("/ok", "/more", "/moved"):
                starter = starter_for(probe_of(spec.HttpGet(port=state.port, path=path)))
                done = asyncio.get_running_loop().create_future()
                starter(FakeAccess(), done.set_result)
                result = await asyncio.wait_for(done, 5)
                recipes[path] = (result.outcome, starter.repeatable)
            return recipes
        finally:
            server.close()
    recipes = run(scenario())
    assert {path: outcome for path, (outcome, _) in recipes.items()} == dict.fromkeys(
        recipes, Outcome.SUCCESS)
    assert recipes["/ok"][1].status == 299 and recipes["/ok"][1].message.startswith(
        "HTTP 299 from GET")
    assert recipes["/more"][1] is None and recipes["/moved"][1] is None


def test_a_connection_reset_after_the_request_names_the_error_plainly():
    async def reset(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def scenario():
        ports = []

        def handler(port):
            ports.append(port)
            return spec.HttpGet(port=port)
        return await probe_against(reset, handler), ports[0]
    result, port = run(scenario())
    assert (result.outcome, result.message) == (
        Outcome.FAILURE, f"HTTP GET http port {port}: connection reset by peer")


def test_a_long_url_of_the_spec_is_shown_whole():
    path = "/" + "p" * 300
    result, state = run(http_probe({path: Route(200)}, {"path": path}))
    assert result.message == f"HTTP 200 from GET http://127.0.0.1:{state.port}{path}"


# -- request building -----------------------------------------------------------------

@pytest.mark.parametrize("given,sent", [
    ("[fe80::1%eth0]:8080", "[fe80::1]:8080"), ("[fe80::1%a%b]:80", "[fe80::1]:80"),
    ("fe80::1%eth0", "fe80::1"), ("%]:80", "]:80"), ("[a]b%c]:80", "[a]b]:80"),
    ("[a%b]c]", "[a]c]"), ("host:80", "host:80"), ("[::1]:80", "[::1]:80"),
])
def test_a_zone_is_dropped_from_the_host_header(given, sent):
    assert _without_zone(given) == sent


@pytest.mark.parametrize("host,port,scheme,authority", [
    ("10.0.0.1", 80, "http", "10.0.0.1"), ("10.0.0.1", 443, "http", "10.0.0.1:443"),
    ("::1", 443, "https", "[::1]"), ("::1", 8443, "https", "[::1]:8443"),
])
def test_the_authority_leaves_out_the_schemes_default_port(host, port, scheme, authority):
    assert _authority(host, port, scheme) == authority


def test_requests_are_kept_per_target_up_to_65():
    starter = HttpProbeStarter(probe_of(spec.HttpGet(port=80)))
    first = starter.request("http", "10.0.0.1", 80, "/")
    assert starter.request("http", "10.0.0.1", 80, "/") is first
    assert starter.request("http", "10.0.0.1", 80, "/", keep=False) is first  # found
    assert starter.request("http", "10.0.0.2", 80, "/", keep=False) is not (
        starter.request("http", "10.0.0.2", 80, "/", keep=False))
    for i in range(2, 65):
        starter.request("http", f"10.0.1.{i}", 80, "/")
    assert starter.request("http", "10.0.0.1", 80, "/") is first  # 64 kept: no room made
    starter.request("http", "10.0.2.1", 80, "/")  # the 65th
    assert starter.request("http", "10.0.0.1", 80, "/") is first
    starter.request("http", "10.0.2.2", 80, "/")  # the 66th: the others are dropped
    assert starter.request("http", "10.0.0.1", 80, "/") is not first


@pytest.mark.parametrize("value,parts", [
    ("[::1]:80", ("::1", ":80")), ("[]:80", ("", ":80")), ("[::1]]:80", ("::1", "]:80")),
    ("[::1", ("[::1", "")), ("::1", ("::1", "")), ("h:80", ("h", ":80")), ("h", ("h", "")),
])
def test_a_host_headers_host_and_port(value, parts):
    assert _split_host_port(value) == parts


@pytest.mark.parametrize("host,name", [
    ("example.com:8443", "example.com"), ("guest.invalid", "guest.invalid"),
    ("10.0.0.1", ""), ("[::1]:443", ""), ("fe80::1%a%b", ""),
    ("[fe80::1%nosuchif]:443", ""), ("", ""),
])
def test_the_tls_server_name_is_a_name_never_an_address(host, name):
    assert _server_name(host) == name


def test_a_starter_begins_with_nothing_to_repeat_and_no_server_name():
    starter = HttpProbeStarter(probe_of(spec.HttpGet(port=443, scheme=spec.Scheme.HTTPS)))
    assert starter.repeatable is None and starter.server_name == ""
    named = HttpProbeStarter(probe_of(spec.HttpGet(port=443, host="db.example")))
    assert named.server_name == "db.example"
    given = HttpProbeStarter(probe_of(spec.HttpGet(
        port=443, host="db.example", http_headers=(("Host", "[fe80::1%a%b]:8443"),))))
    assert given.server_name == ""
    assert b"\r\nHost: [fe80::1]:8443\r\n" in given.request("https", "10.0.0.1", 443, "/")[0]


def test_the_request_ends_its_head_closing_the_connection():
    request = _build_request(spec.HttpGet(port=80), "/X", "10.0.0.1")
    assert request == (b"GET /X HTTP/1.1\r\nHost: 10.0.0.1\r\nUser-Agent: "
                       + USER_AGENT.encode() + b"\r\nAccept: */*\r\nConnection: close"
                       b"\r\n\r\n")


@pytest.mark.parametrize("headers,target,error", [
    ((), "/a b", "the request path contains spaces or control characters"),
    ((), "/a\x00", "the request path contains spaces or control characters"),
    ((("X-A", "1"), ("X B", "2")), "/", "httpHeaders[1].name is not a valid HTTP header name"),
    ((("X-A", "1\r\nX-B: 2"),), "/", "httpHeaders[0].value contains line breaks"),
])
def test_a_request_that_cannot_be_built_names_the_part_never_the_value(headers, target,
                                                                        error):
    with pytest.raises(ValueError) as caught:
        _build_request(spec.HttpGet(port=80, http_headers=headers), target, "10.0.0.1")
    assert str(caught.value) == error


def test_a_bad_header_ends_the_run_as_an_error_before_any_connection():
    handler = spec.HttpGet(port=free_port(), http_headers=(("X-A", "1\n2"),))
    result = run(run_probe(probe_of(handler), FakeAccess()))
    assert (result.outcome, result.message) == (
        Outcome.ERROR, "cannot build the request: httpHeaders[0].value contains line breaks")
