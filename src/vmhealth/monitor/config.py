"""The daemon's configuration: /etc/vmhealth/vmhealth.conf (INI, read with configparser).

Every key has a documented default (host/vmhealth.conf lists them all, commented out),
so an empty or missing file is a valid configuration. A bad value stops the daemon
with a message naming the section, the key and what is allowed; a key we do not know
is an error too, because a typo silently ignored is a setting silently lost.

The [defaults] section holds host-wide defaults for health specs: they fill in fields
a stored spec leaves out (specs written by other tools, or by hand).

The libvirt URI, as for every vmhealth command: `[daemon] libvirt_uri` when the file
sets it, else $LIBVIRT_DEFAULT_URI in the daemon's environment, else
vmhealth.connection.DEFAULT_URI (qemu:///system).

The hook's spool directory is not a key: the hook cannot read this file (libvirt
waits for it on every start), so a key could only make the two disagree. Both use
vmhealth.hook.spool.spool_dir(): /run/vmhealth/domains, or $VMHEALTH_SPOOL_DIR
where a sandbox sets it for both (libvirt gives hooks no environment of its own).
"""

from __future__ import annotations

import configparser
import grp
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from vmhealth.connection import default_uri
from vmhealth.hook import spool
from vmhealth.spec_rules import LIVENESS_ACTIONS, PROBE_KINDS

# The one home of the path: `vmhealth daemon --config` defaults to it.
DEFAULT_PATH = "/etc/vmhealth/vmhealth.conf"


class ConfigError(ValueError):
    """A configuration file we refuse; the message names the key and the fix."""


@dataclass(frozen=True)
class DaemonConfig:
    # Read when the configuration is made (load_config, parse_config): see above.
    libvirt_uri: str = field(default_factory=default_uri)
    spool_dir: str = field(default_factory=spool.spool_dir)
    socket_path: str = "/run/vmhealth/api.sock"
    socket_group: str = ""  # empty: the daemon's own group (root)
    # Who may run probes on demand (POST /probe) besides root: empty, root only.
    probe_group: str = ""
    # The read-only web listener (/metrics, /ready, /healthz), e.g. 0.0.0.0:9477; empty:
    # none. Its TLS and basic authentication: a Prometheus web.config.yml.
    tcp_listen: str = ""
    web_config_file: str = ""
    # Guest-agent calls in flight on one of the daemon's agent connections to libvirt;
    # keep it below libvirtd.conf's max_client_requests (default 5).
    agent_calls_per_connection: int = 4
    agent_threads: int | None = None  # deprecated and ignored: see DEPRECATED_KEYS
    control_threads: int = 4
    address_refresh_seconds: float = 30.0
    state_refresh_seconds: float = 2.0
    reconnect_max_seconds: float = 30.0
    event_buffer: int = 1000
    log_level: str = "info"
    native_lane: bool = True  # repeat settled network probes in the native engine
    backoff_initial_seconds: float = 10.0
    backoff_max_seconds: float = 300.0
    backoff_reset_seconds: float = 600.0
    # Host-wide spec defaults, in the spec's own camelCase form (probe and spec level).
    spec_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        if not self.tcp_listen:
            return None
        return _split_host_port(self.tcp_listen, "daemon.tcp_listen")


def _split_host_port(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where}: must be HOST:PORT (e.g. 127.0.0.1:9477 or [::1]:9477), "
                          f"got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{where}: HOST must be an IP address, got {host!r}") from None
    return host, int(port)


def _positive_number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{where}: must be above 0, got {text!r}")
    return value


def _positive_int(text: str, where: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{where}: must be a whole number of at least 1, got {text!r}")
    return int(text)


def _non_negative_int(text: str, where: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"{where}: must be a whole number of at least 0, got {text!r}")
    return int(text)


def _text(text: str, where: str) -> str:
    return text.strip()


def _absolute_path(text: str, where: str) -> str:
    if not text.startswith("/"):
        raise ConfigError(f"{where}: must be an absolute path, got {text!r}")
    return text


def _group(text: str, where: str) -> str:
    if text:
        try:
            grp.getgrnam(text)
        except KeyError:
            raise ConfigError(f"{where}: no such group {text!r} (create it or leave the key "
                              "empty for root only)") from None
    return text


def _tcp(text: str, where: str) -> str:
    if text:
        _split_host_port(text, where)
    return text


def _web_config(text: str, where: str) -> str:
    """Read now, so that a bad file stops the daemon at start with its message."""
    if text:
        from vmhealth.monitor.webconfig import WebConfigError, load_web_config

        try:
            load_web_config(_absolute_path(text, where))
        except WebConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return text


def _log_level(text: str, where: str) -> str:
    allowed = ("debug", "info", "warning", "error")
    if text.lower() not in allowed:
        raise ConfigError(f"{where}: must be one of {', '.join(allowed)}, got {text!r}")
    return text.lower()


def _yes_no(text: str, where: str) -> bool:
    words = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}
    value = words.get(text.strip().lower())
    if value is None:
        raise ConfigError(f"{where}: must be yes or no, got {text!r}")
    return value


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def check(text: str, where: str) -> str:
        if text not in allowed:
            raise ConfigError(f"{where}: must be one of {', '.join(allowed)}, got {text!r}")
        return text
    return check


# section -> key -> (DaemonConfig attribute, converter)
DAEMON_KEYS: dict[str, dict[str, tuple[str, Callable[[str, str], Any]]]] = {
    "daemon": {
        "libvirt_uri": ("libvirt_uri", _text),
        "agent_calls_per_connection": ("agent_calls_per_connection", _positive_int),
        "control_threads": ("control_threads", _positive_int),
        "address_refresh_seconds": ("address_refresh_seconds", _positive_number),
        "state_refresh_seconds": ("state_refresh_seconds", _positive_number),
        "reconnect_max_seconds": ("reconnect_max_seconds", _positive_number),
        "event_buffer": ("event_buffer", _positive_int),
        "log_level": ("log_level", _log_level),
        "native_lane": ("native_lane", _yes_no),
    },
    "api": {
        "socket_path": ("socket_path", _absolute_path),
        "socket_group": ("socket_group", _group),
        "probe_group": ("probe_group", _group),
        "tcp_listen": ("tcp_listen", _tcp),
        "web_config_file": ("web_config_file", _web_config),
    },
    "backoff": {
        "initial_seconds": ("backoff_initial_seconds", _positive_number),
        "max_seconds": ("backoff_max_seconds", _positive_number),
        "reset_after_seconds": ("backoff_reset_seconds", _positive_number),
    },
}

# Keys of earlier versions, refused with the reason (rather than as unknown keys).
REMOVED_KEYS = {
    ("daemon", "spool_dir"): "no longer a key: the hook cannot read this file, so the "
                             "daemon and the hook both use /run/vmhealth/domains; remove "
                             "the line",
}

# Keys of earlier versions still read, but ignored: the daemon logs a warning at start.
DEPRECATED_KEYS: dict[tuple[str, str], tuple[str, Callable[[str, str], Any]]] = {
    # Agent calls get a thread each (agent_connections.py), not one of a fixed pool.
    ("daemon", "agent_threads"): ("agent_threads", _positive_int),
}

# [defaults] keys: spec field -> converter. Probe timing applies to every probe kind.
PROBE_DEFAULT_KEYS: dict[str, Callable[[str, str], Any]] = {
    "initialDelaySeconds": _non_negative_int,
    "periodSeconds": _positive_int,
    "timeoutSeconds": _positive_int,
    "failureThreshold": _positive_int,
}
SPEC_DEFAULT_KEYS: dict[str, Callable[[str, str], Any]] = {
    "terminationGracePeriodSeconds": _non_negative_int,
    "onLivenessFailure": _choice(*LIVENESS_ACTIONS),
}


def parse_config(text: str, source: str = DEFAULT_PATH) -> DaemonConfig:
    # interpolation off: a '%' in a path must stay a '%'; optionxform keeps camelCase.
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {exc}") from None
    values: dict[str, Any] = {}
    spec_defaults: dict[str, Any] = {}
    for section in parser.sections():
        if section == "defaults":
            spec_defaults = _parse_defaults(parser[section], source)
            continue
        keys = DAEMON_KEYS.get(section)
        if keys is None:
            allowed = ", ".join([*DAEMON_KEYS, "defaults"])
            raise ConfigError(f"{source}: unknown section [{section}]; allowed: {allowed}")
        for key, raw in parser[section].items():
            if (section, key) in REMOVED_KEYS:
                raise ConfigError(f"{source}: [{section}] {key}: "
                                  f"{REMOVED_KEYS[section, key]}")
            if (section, key) in DEPRECATED_KEYS:
                attribute, convert = DEPRECATED_KEYS[section, key]
                values[attribute] = convert(raw.strip(), f"{source}: [{section}] {key}")
                continue
            if key not in keys:
                raise ConfigError(f"{source}: [{section}] {key}: unknown key; allowed: "
                                  f"{', '.join(keys)}")
            attribute, convert = keys[key]
            values[attribute] = convert(raw.strip(), f"{source}: [{section}] {key}")
    config = DaemonConfig(**values, spec_defaults=spec_defaults)
    if config.backoff_max_seconds < config.backoff_initial_seconds:
        raise ConfigError(f"{source}: [backoff] max_seconds must not be below initial_seconds")
    return config


def _parse_defaults(section: configparser.SectionProxy, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = {**PROBE_DEFAULT_KEYS, **SPEC_DEFAULT_KEYS}
    for key, raw in section.items():
        if key not in known:
            raise ConfigError(f"{source}: [defaults] {key}: unknown key; allowed: "
                              f"{', '.join(known)}")
        out[key] = known[key](raw.strip(), f"{source}: [defaults] {key}")
    if out.get("timeoutSeconds", 1) > out.get("periodSeconds", 10):
        raise ConfigError(f"{source}: [defaults] timeoutSeconds must not be above periodSeconds")
    return out


def load_config(path: str = DEFAULT_PATH, *, missing_ok: bool = True) -> DaemonConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if missing_ok:
            return DaemonConfig()
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, path)


def with_spec_defaults(data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A copy of a serialised spec with host-wide defaults filling the fields it lacks."""
    out = dict(data)
    for key in SPEC_DEFAULT_KEYS:
        if key in defaults and key not in out:
            out[key] = defaults[key]
    for kind in PROBE_KINDS:
        probe = out.get(kind)
        if not isinstance(probe, dict):
            continue
        filled = dict(probe)
        for key in PROBE_DEFAULT_KEYS:
            if key in defaults and key not in filled:
                filled[key] = defaults[key]
        # A default period shorter than a probe's own timeout would make a valid spec
        # invalid; keep the spec valid by not applying the period there.
        if ("periodSeconds" not in probe and "periodSeconds" in filled
                and filled.get("timeoutSeconds", 1) > filled["periodSeconds"]):
            del filled["periodSeconds"]
        out[kind] = filled
    return out
