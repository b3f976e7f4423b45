"""The web listener's TLS and basic authentication, from a Prometheus web.config.yml.

The file has the format of the Prometheus exporter-toolkit (`--web.config.file` of
node_exporter and friends, docs/prometheus.md), so one file and one habit serve every
exporter of a host. What vmhealth reads:

tls_server_config:
  cert_file, key_file          PEM files (both or neither; TLS is on when given)
  client_auth_type             NoClientCert (default), VerifyClientCertIfGiven,
                               RequireAndVerifyClientCert
  client_ca_file               PEM bundle verifying client certificates
  min_version, max_version     TLS12 or TLS13 (defaults TLS12 and TLS13)
  prefer_server_cipher_suites  accepted and ignored (as Go >= 1.17 does)
http_server_config:
  http2                        accepted and ignored: the listener speaks HTTP/1.1
  headers                      extra response headers (the toolkit's five names)
basic_auth_users               user: bcrypt hash ($2a$, $2b$ or $2y$)

Anything else is refused by name: a setting silently ignored is a protection silently
missing (a cipher list, a SAN allow list or a rate limit the operator counts on).
The file is read when the daemon starts (the toolkit reads it on every request):
restart the daemon after changing it or the certificate (a restart does nothing to
guests; docs/daemon.md).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any

import yaml

FILE_LIMIT = 1 << 20  # bytes; a web.config.yml is a few hundred
# $2a$/$2b$/$2y$, a two-digit cost, 22 characters of salt and 31 of hash (bcrypt's base64).
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# RequestClientCert and RequireAnyClientCert take a certificate nobody verified: the
# toolkit itself calls them insecure, and Python's ssl cannot ask without verifying.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
           "X-XSS-Protection", "Strict-Transport-Security")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "prefer_server_cipher_suites")
HTTP_KEYS = ("http2", "headers")
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")


class WebConfigError(ValueError):
    """A web.config.yml we refuse; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None  # None: plain HTTP
    users: dict[str, bytes] = field(default_factory=dict)  # empty: no authentication
    headers: dict[str, str] = field(default_factory=dict)


def load_web_config(path: str) -> WebConfig:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(FILE_LIMIT + 1)
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > FILE_LIMIT:
        raise WebConfigError(f"{path}: larger than {FILE_LIMIT} bytes; is it the right file?")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_web_config(data, path)


def parse_web_config(data: Any, source: str) -> WebConfig:
    data = _mapping({} if data is None else data, source, "the file", TOP_KEYS)
    tls = _mapping(data.get("tls_server_config") or {}, source, "tls_server_config",
                   TLS_KEYS)
    http = _mapping(data.get("http_server_config") or {}, source, "http_server_config",
                    HTTP_KEYS)
    return WebConfig(ssl_context=_ssl_context(tls, source) if tls else None,
                     users=_users(data.get("basic_auth_users") or {}, source),
                     headers=_headers(http, source))


def _mapping(value: Any, source: str, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise WebConfigError(f"{source}: {where}: must be a mapping, got {type(value).__name__}")
    unknown = [str(key) for key in value if key not in allowed]
    if unknown:
        raise WebConfigError(f"{source}: {where}: {', '.join(unknown)}: not supported by "
                             f"vmhealth (it reads {', '.join(allowed)}); remove it, or put "
                             "a reverse proxy in front for what it does")
    return value


def _string(tls: dict, key: str, source: str) -> str:
    value = tls.get(key, "")
    if not isinstance(value, str):
        raise WebConfigError(f"{source}: tls_server_config.{key}: must be a string")
    return value


def _boolean(mapping: dict, key: str, where: str, source: str) -> None:
    """A flag vmhealth accepts and has no use for; still, only a flag."""
    if not isinstance(mapping.get(key, True), bool):
        raise WebConfigError(f"{source}: {where}.{key}: must be true or false")


def _ssl_context(tls: dict, source: str) -> ssl.SSLContext:
    cert, key = _string(tls, "cert_file", source), _string(tls, "key_file", source)
    if not cert or not key:
        raise WebConfigError(f"{source}: tls_server_config: needs both cert_file and key_file "
                             "(PEM files; the inline cert and key are not supported)")
    _boolean(tls, "prefer_server_cipher_suites", "tls_server_config", source)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _tls_version(tls, "min_version", "TLS12", source)
    context.maximum_version = _tls_version(tls, "max_version", "TLS13", source)
    if context.minimum_version > context.maximum_version:
        raise WebConfigError(f"{source}: tls_server_config: min_version is above max_version")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"{source}: tls_server_config: cannot load cert_file {cert!r} "
                             f"with key_file {key!r}: {exc}") from None
    _client_auth(context, tls, source)
    return context


def _tls_version(tls: dict, key: str, default: str, source: str) -> ssl.TLSVersion:
    value = tls.get(key, default)
    if value not in TLS_VERSIONS:
        raise WebConfigError(f"{source}: tls_server_config.{key}: must be one of "
                             f"{', '.join(TLS_VERSIONS)}, got {value!r}")
    return TLS_VERSIONS[value]


def _client_auth(context: ssl.SSLContext, tls: dict, source: str) -> None:
    kind = tls.get("client_auth_type", "NoClientCert")
    if kind in UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(f"{source}: tls_server_config.client_auth_type: {kind} accepts "
                             "certificates nobody verified; use RequireAndVerifyClientCert "
                             "with client_ca_file")
    if kind not in CLIENT_AUTH:
        raise WebConfigError(f"{source}: tls_server_config.client_auth_type: must be one of "
                             f"{', '.join(CLIENT_AUTH)}, got {kind!r}")
    ca_file = _string(tls, "client_ca_file", source)
    if kind != "NoClientCert" and not ca_file:
        raise WebConfigError(f"{source}: tls_server_config.client_auth_type: {kind} needs "
                             "client_ca_file (the CA that signs the scrapers' certificates)")
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{source}: tls_server_config.client_ca_file: cannot load "
                                 f"{ca_file!r}: {exc}") from None
    context.verify_mode = CLIENT_AUTH[kind]


def _users(users: Any, source: str) -> dict[str, bytes]:
    if not isinstance(users, dict):
        raise WebConfigError(f"{source}: basic_auth_users: must be a mapping of user: "
                             "bcrypt hash")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"{source}: basic_auth_users: user {user!r}: must be a "
                                 "non-empty string without ':'")
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise WebConfigError(f"{source}: basic_auth_users.{user}: must be a bcrypt hash "
                                 "($2y$10$... from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`), "
                                 "never the password itself")
        out[user] = hashed.encode("ascii")
    return out


def _headers(http: dict, source: str) -> dict[str, str]:
    _boolean(http, "http2", "http_server_config", source)
    headers = _mapping(http.get("headers") or {}, source, "http_server_config.headers",
                       HEADERS)
    for name, value in headers.items():
        if not isinstance(value, str) or not value.isprintable():
            raise WebConfigError(f"{source}: http_server_config.headers.{name}: must be "
                                 "a single line of printable text")
    return {name: value for name, value in headers.items() if value}
