"""HTTP header names and values: one rule, in vmhealth.spec_rules, asked by `apply` (the
spec check) and by the HTTP probe handler (the request it sends)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmhealth import spec_rules
from vmhealth.monitor.probes import http
from vmhealth.spec import HttpGet, SpecError, parse_spec


def _headers(name: str, value: str = "v") -> dict:
    return {"readinessProbe": {"httpGet": {"port": 80,
                                           "httpHeaders": [{"name": name, "value": value}]}}}


@pytest.mark.parametrize("name", ["X-Probe", "x_probe", "A1", "!#$%&'*+-.^_`|~"])
def test_token_names_pass_apply_and_reach_the_wire(name):
    handler = parse_spec(_headers(name)).readiness_probe.handler
    request = http._build_request(handler, "/", "10.0.0.5")
    assert f"\r\n{name}: v\r\n".encode() in request


@pytest.mark.parametrize("name", ["X(Probe)", "X Probe", "X:Probe", "X/Probe", "Ünïcode",
                                  "X\"Q\"", "X{1}", "X@h", "X\x7f"])
def test_names_the_wire_refuses_are_refused_by_apply_too(name):
    with pytest.raises(SpecError) as caught:
        parse_spec(_headers(name))
    assert caught.value.path == "spec.readinessProbe.httpGet.httpHeaders[0].name"
    assert "RFC 7230 token" in caught.value.message
    # The handler's own check (for specs built in code) is the same function.
    with pytest.raises(ValueError, match=r"httpHeaders\[0\].name"):
        http._build_request(HttpGet(port=80, http_headers=((name, "v"),)), "/", "h")


@pytest.mark.parametrize("value", ["a\rb", "a\nb"])
def test_values_that_would_end_the_header_line_are_refused(value):
    with pytest.raises(SpecError, match=r"httpHeaders\[0\].value: must not contain line"):
        parse_spec(_headers("X-A", value))
    assert not spec_rules.is_http_header_value(value)
    assert not spec_rules.is_http_header_value("a\x00b")
    assert spec_rules.is_http_header_value("any text: with (punctuation) and ünïcode")


def test_an_empty_name_is_no_header():
    assert not spec_rules.is_http_header_name("")


@given(st.from_regex(r"\A[-A-Za-z0-9]+\Z"))
def test_every_name_the_kubernetes_api_accepts_passes(name):
    # apimachinery's IsHTTPHeaderName: letters, digits and '-', a subset of the tokens.
    assert spec_rules.is_http_header_name(name)


@given(st.text(min_size=1, max_size=12))
def test_the_handler_sends_exactly_the_names_apply_accepts(name):
    accepted = spec_rules.is_http_header_name(name)
    try:
        http._build_request(HttpGet(port=80, http_headers=((name, "v"),)), "/", "h")
    except ValueError:
        sent = False
    else:
        sent = True
    assert sent == accepted
