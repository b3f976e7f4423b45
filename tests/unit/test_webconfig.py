"""web.config.yml (the Prometheus exporter-toolkit format) for the web listener."""

from __future__ import annotations

import ssl

import pytest
from tests.unit.tls_files import self_signed

from vmhealth.monitor.config import ConfigError, parse_config
from vmhealth.monitor.webconfig import (
    WebConfigError,
    load_web_config,
    parse_web_config,
)

# bcrypt hashes of "alice-pass" and "bob-pass", cost 10, in htpasswd's $2y$ form.
ALICE = "$2y$10$IEVKLISsrPr4agMTqFe8b.q1lyNNY9btoGTy8.Y.IBiCL0U9raePi"
BOB = "$2y$10$jBZoOMPObDT.ci2aH2Zm..vIJda40cTLIawQJo/U72HSQnuS1J12G"


@pytest.fixture
def pem(tmp_path):
    return self_signed(tmp_path)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "web.config.yml"
    path.write_text(text)
    return str(path)


def test_empty_file_means_plain_http_without_authentication(tmp_path):
    config = load_web_config(write(tmp_path, ""))
    assert (config.ssl_context, config.users, config.headers) == (None, {}, {})


def test_tls_and_users_as_in_the_toolkit_example(tmp_path, pem):
    cert, key = pem
    config = load_web_config(write(tmp_path, f"""\
tls_server_config:
  cert_file: {cert}
  key_file: {key}
basic_auth_users:
  alice: {ALICE}
  bob: {BOB}
"""))
    assert config.users == {"alice": ALICE.encode(), "bob": BOB.encode()}
    context = config.ssl_context
    assert context.verify_mode == ssl.CERT_NONE
    assert (context.minimum_version, context.maximum_version) == (
        ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def test_client_certificates_and_versions(tmp_path, pem):
    cert, key = pem
    context = parse_web_config({"tls_server_config": {
        "cert_file": str(cert), "key_file": str(key), "client_ca_file": str(cert),
        "client_auth_type": "RequireAndVerifyClientCert", "min_version": "TLS13",
        "prefer_server_cipher_suites": True}}, "w.yml").ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_headers_and_http2_flag(tmp_path):
    config = parse_web_config({"http_server_config": {"http2": False, "headers": {
        "Strict-Transport-Security": "max-age=31536000", "X-Frame-Options": ""}}}, "w.yml")
    assert config.headers == {"Strict-Transport-Security": "max-age=31536000"}


def tls(cert, key, **more):
    return {"tls_server_config": {"cert_file": str(cert), "key_file": str(key), **more}}


@pytest.mark.parametrize("make, message", [
    (lambda c, k: {"rate_limit": {"interval": "1s"}},
     "w.yml: the file: rate_limit: not supported by vmhealth"),
    (lambda c, k: tls(c, k, cipher_suites=["TLS_AES_128_GCM_SHA256"]),
     "tls_server_config: cipher_suites: not supported by vmhealth"),
    (lambda c, k: tls(c, k, client_allowed_sans=["scraper"]),
     "tls_server_config: client_allowed_sans: not supported"),
    (lambda c, k: {"tls_server_config": {"cert": "-----BEGIN", "key": "-----BEGIN"}},
     "tls_server_config: cert, key: not supported"),
    (lambda c, k: {"tls_server_config": {"cert_file": str(c)}},
     "tls_server_config: needs both cert_file and key_file"),
    (lambda c, k: tls(c, "/nonexistent.key"), "cannot load cert_file"),
    (lambda c, k: tls(k, c), "cannot load cert_file"),
    (lambda c, k: tls(c, k, min_version="TLS11"),
     "tls_server_config.min_version: must be one of TLS12, TLS13, got 'TLS11'"),
    (lambda c, k: tls(c, k, min_version="TLS13", max_version="TLS12"),
     "min_version is above max_version"),
    (lambda c, k: tls(c, k, client_auth_type="RequireAnyClientCert"),
     "RequireAnyClientCert accepts certificates nobody verified"),
    (lambda c, k: tls(c, k, client_auth_type="RequireAndVerifyClientCert"),
     "RequireAndVerifyClientCert needs client_ca_file"),
    (lambda c, k: tls(c, k, client_auth_type="Always"),
     "client_auth_type: must be one of NoClientCert"),
    (lambda c, k: tls(c, k, client_ca_file="/nonexistent.pem"),
     "client_ca_file: cannot load '/nonexistent.pem'"),
    (lambda c, k: tls(c, k, prefer_server_cipher_suites="yes"),
     "prefer_server_cipher_suites: must be true or false"),
    (lambda c, k: {"basic_auth_users": {"alice": "plain-password"}},
     "basic_auth_users.alice: must be a bcrypt hash"),
    (lambda c, k: {"basic_auth_users": {"alice": "$2y$10$short"}},
     "basic_auth_users.alice: must be a bcrypt hash"),
    (lambda c, k: {"basic_auth_users": {"a:b": ALICE}},
     "user 'a:b': must be a non-empty string without ':'"),
    (lambda c, k: {"basic_auth_users": ["alice"]}, "basic_auth_users: must be a mapping"),
    (lambda c, k: {"http_server_config": {"headers": {"Set-Cookie": "x"}}},
     "http_server_config.headers: Set-Cookie: not supported"),
    (lambda c, k: {"http_server_config": {"headers": {"X-Frame-Options": "deny\r\nX: y"}}},
     "headers.X-Frame-Options: must be a single line"),
    (lambda c, k: {"http_server_config": {"http2": "on"}}, "http2: must be true or false"),
    (lambda c, k: ["tls_server_config"], "the file: must be a mapping, got list"),
])
def test_refusals_name_the_field_and_the_fix(pem, make, message):
    with pytest.raises(WebConfigError) as error:
        parse_web_config(make(*pem), "w.yml")
    assert message in str(error.value)


def test_unreadable_or_not_yaml(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read: No such file"):
        load_web_config(str(tmp_path / "missing.yml"))
    with pytest.raises(WebConfigError, match="not valid YAML"):
        load_web_config(write(tmp_path, "tls_server_config: [\n"))


def test_daemon_configuration_reads_the_file_at_load(tmp_path):
    path = write(tmp_path, f"basic_auth_users:\n  alice: '{ALICE}'\n")
    config = parse_config(f"[api]\ntcp_listen = 0.0.0.0:9477\nweb_config_file = {path}\n")
    assert (config.tcp_address, config.web_config_file) == (("0.0.0.0", 9477), path)
    write(tmp_path, "basic_auth_users:\n  alice: hunter2\n")
    with pytest.raises(ConfigError, match=r"\[api\] web_config_file: .*must be a bcrypt hash"):
        parse_config(f"[api]\nweb_config_file = {path}\n")
    with pytest.raises(ConfigError, match="must be an absolute path"):
        parse_config("[api]\nweb_config_file = web.config.yml\n")
