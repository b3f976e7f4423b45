"""The health spec: probes, watchdog and liveness outcome for one domain.

The model mirrors the Kubernetes/KubeVirt probe API (camelCase field names in the
serialised form) so that a KubeVirt manifest's probes carry over unchanged.
Validation follows Kubernetes/KubeVirt admission; every error names the field path
and what is allowed, so an operator can fix the manifest without reading code.

This module imports only the standard library: the libvirt hook validates specs on
every domain start and must stay cheap to import.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

DEFAULT_GRACE_PERIOD_SECONDS = 30  # Kubernetes' and KubeVirt's default


class SpecError(ValueError):
    """An invalid spec. `path` is the field (e.g. spec.readinessProbe.httpGet.port)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class Scheme(str, enum.Enum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"


class WatchdogModel(str, enum.Enum):
    I6300ESB = "i6300esb"
    IB700 = "ib700"
    DIAG288 = "diag288"
    ITCO = "itco"


class WatchdogAction(str, enum.Enum):
    """Every action libvirt's <watchdog action=...> accepts."""

    RESET = "reset"
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    PAUSE = "pause"
    NONE = "none"
    DUMP = "dump"
    INJECT_NMI = "inject-nmi"


class LivenessAction(str, enum.Enum):
    """What the daemon does once liveness crosses its failure threshold."""

    RESTART = "restart"  # graceful shutdown for the grace period, destroy, start again
    RESET = "reset"  # hard reset of the running domain
    POWEROFF = "poweroff"  # destroy and leave it off
    NONE = "none"  # report only


class ProbeKind(str, enum.Enum):
    LIVENESS = "livenessProbe"
    READINESS = "readinessProbe"
    STARTUP = "startupProbe"

    @property
    def short(self) -> str:
        return self.value[: -len("Probe")]


@dataclass(frozen=True)
class HttpGet:
    port: int
    path: str = "/"
    host: str | None = None
    scheme: Scheme = Scheme.HTTP
    http_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpSocket:
    port: int
    host: str | None = None


@dataclass(frozen=True)
class Exec:
    command: tuple[str, ...]


@dataclass(frozen=True)
class GuestAgentPing:
    pass


Handler = Union[HttpGet, TcpSocket, Exec, GuestAgentPing]

HANDLER_FIELDS: dict[str, type] = {
    "httpGet": HttpGet,
    "tcpSocket": TcpSocket,
    "exec": Exec,
    "guestAgentPing": GuestAgentPing,
}


@dataclass(frozen=True)
class Probe:
    handler: Handler
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    # Kubernetes' probe-level override of the grace period (liveness/startup only).
    termination_grace_period_seconds: int | None = None


@dataclass(frozen=True)
class Watchdog:
    name: str = "watchdog"
    model: WatchdogModel = WatchdogModel.I6300ESB
    action: WatchdogAction = WatchdogAction.RESET


@dataclass(frozen=True)
class HealthSpec:
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    watchdog: Watchdog | None = None
    termination_grace_period_seconds: int = DEFAULT_GRACE_PERIOD_SECONDS
    on_liveness_failure: LivenessAction = LivenessAction.RESTART
    # cloud-init user data carried by a KubeVirt manifest, kept for `vmhealth cloudinit`.
    user_data: str | None = None

    def probes(self) -> dict[ProbeKind, Probe]:
        found = {
            ProbeKind.STARTUP: self.startup_probe,
            ProbeKind.READINESS: self.readiness_probe,
            ProbeKind.LIVENESS: self.liveness_probe,
        }
        return {kind: probe for kind, probe in found.items() if probe is not None}

    def grace_period_for(self, probe: Probe) -> int:
        """Grace period for a shutdown caused by `probe`: its own override, else the spec's."""
        if probe.termination_grace_period_seconds is not None:
            return probe.termination_grace_period_seconds
        return self.termination_grace_period_seconds

    def is_empty(self) -> bool:
        return not self.probes() and self.watchdog is None


# ---------------------------------------------------------------------------
# Parsing and validation (dict in the KubeVirt/vmhealth camelCase form -> model)
# ---------------------------------------------------------------------------

SPEC_FIELDS = (
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "watchdog",
    "terminationGracePeriodSeconds",
    "onLivenessFailure",
    "userData",
)
PROBE_TIMING_FIELDS = {
    # field: (attribute, minimum)
    "initialDelaySeconds": ("initial_delay_seconds", 0),
    "periodSeconds": ("period_seconds", 1),
    "timeoutSeconds": ("timeout_seconds", 1),
    "successThreshold": ("success_threshold", 1),
    "failureThreshold": ("failure_threshold", 1),
    "terminationGracePeriodSeconds": ("termination_grace_period_seconds", 0),
}
# Kubernetes probe handlers vmhealth cannot run against a VM, with the reason.
UNSUPPORTED_HANDLERS = {
    "grpc": "gRPC probes are not supported; use httpGet, tcpSocket, exec or guestAgentPing",
}
MAX_INT32 = 2**31 - 1


def _expect_mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, f"must be a mapping, not {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(path, f"keys must be strings, not {_type_name(key)} ({key!r})")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _reject_unknown(data: dict[str, Any], allowed: tuple[str, ...] | set[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            allowed_text = ", ".join(sorted(allowed)) or "none"
            raise SpecError(f"{path}.{key}", f"unknown field; allowed: {allowed_text}")


def _int(value: Any, path: str, minimum: int, maximum: int = MAX_INT32) -> int:
    # bool is a subclass of int in Python; `port: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, not {_type_name(value)} ({value!r})")
    if not minimum <= value <= maximum:
        raise SpecError(path, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _str(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, not {_type_name(value)}")
    if not allow_empty and not value:
        raise SpecError(path, "must not be empty")
    if "\x00" in value:
        raise SpecError(path, "must not contain NUL characters")
    return value


def _enum(enum_type: type[enum.Enum], value: Any, path: str) -> Any:
    text = _str(value, path)
    for member in enum_type:
        if member.value == text:
            return member
    allowed = ", ".join(member.value for member in enum_type)
    raise SpecError(path, f"must be one of {allowed}, got {text!r}")


def _port(value: Any, path: str) -> int:
    if isinstance(value, str):
        raise SpecError(path, f"must be a port number 1..65535; named ports ({value!r}) "
                              "have no meaning for a VM")
    return _int(value, path, 1, 65535)


def _host(value: Any, path: str) -> str | None:
    if value is None:
        return None
    host = _str(value, path, allow_empty=True)
    if any(ch.isspace() for ch in host) or "/" in host:
        raise SpecError(path, f"must be a host name or IP address, got {host!r}")
    return host or None


def _parse_http_get(data: Any, path: str) -> HttpGet:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("port", "path", "host", "scheme", "httpHeaders"), path)
    if "port" not in data:
        raise SpecError(f"{path}.port", "is required (the guest's port, 1..65535)")
    url_path = _str(data.get("path", "/"), f"{path}.path", allow_empty=True) or "/"
    if not url_path.startswith("/"):
        raise SpecError(f"{path}.path", f"must start with '/', got {url_path!r}")
    if any(ch in url_path for ch in "\r\n "):
        raise SpecError(f"{path}.path", "must not contain spaces or line breaks")
    headers_raw = data.get("httpHeaders") or []
    if not isinstance(headers_raw, list):
        raise SpecError(f"{path}.httpHeaders", "must be a list of {name, value} mappings")
    headers = []
    for index, item in enumerate(headers_raw):
        item_path = f"{path}.httpHeaders[{index}]"
        item = _expect_mapping(item, item_path)
        _reject_unknown(item, ("name", "value"), item_path)
        name = _str(item.get("name"), f"{item_path}.name")
        if not all(33 <= ord(ch) <= 126 and ch != ":" for ch in name):
            raise SpecError(f"{item_path}.name", "must be a valid HTTP header name")
        value = _str(item.get("value", ""), f"{item_path}.value", allow_empty=True)
        if "\r" in value or "\n" in value:
            raise SpecError(f"{item_path}.value", "must not contain line breaks")
        headers.append((name, value))
    return HttpGet(
        port=_port(data["port"], f"{path}.port"),
        path=url_path,
        host=_host(data.get("host"), f"{path}.host"),
        scheme=_enum(Scheme, data.get("scheme", "HTTP"), f"{path}.scheme"),
        http_headers=tuple(headers),
    )


def _parse_tcp_socket(data: Any, path: str) -> TcpSocket:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("port", "host"), path)
    if "port" not in data:
        raise SpecError(f"{path}.port", "is required (the guest's port, 1..65535)")
    return TcpSocket(port=_port(data["port"], f"{path}.port"),
                     host=_host(data.get("host"), f"{path}.host"))


def _parse_exec(data: Any, path: str) -> Exec:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("command",), path)
    command = data.get("command")
    if not isinstance(command, list) or not command:
        raise SpecError(f"{path}.command",
                        "must be a non-empty list: the program and its arguments, "
                        "e.g. [\"cat\", \"/tmp/healthy.txt\"]")
    args = tuple(_str(arg, f"{path}.command[{i}]", allow_empty=i > 0)
                 for i, arg in enumerate(command))
    return Exec(command=args)


def _parse_guest_agent_ping(data: Any, path: str) -> GuestAgentPing:
    data = _expect_mapping(data if data is not None else {}, path)
    _reject_unknown(data, (), path)
    return GuestAgentPing()


HANDLER_PARSERS = {
    "httpGet": _parse_http_get,
    "tcpSocket": _parse_tcp_socket,
    "exec": _parse_exec,
    "guestAgentPing": _parse_guest_agent_ping,
}


def parse_probe(data: Any, path: str, kind: ProbeKind) -> Probe:
    data = _expect_mapping(data, path)
    for name, reason in UNSUPPORTED_HANDLERS.items():
        if name in data:
            raise SpecError(f"{path}.{name}", reason)
    _reject_unknown(data, set(HANDLER_PARSERS) | set(PROBE_TIMING_FIELDS), path)
    handlers = [name for name in HANDLER_PARSERS if name in data]
    if len(handlers) != 1:
        found = ", ".join(handlers) if handlers else "none"
        raise SpecError(path, f"must have exactly one handler of httpGet, tcpSocket, exec, "
                              f"guestAgentPing (found: {found})")
    handler_name = handlers[0]
    handler = HANDLER_PARSERS[handler_name](data[handler_name], f"{path}.{handler_name}")
    timing = {attr: _int(data[key], f"{path}.{key}", minimum)
              for key, (attr, minimum) in PROBE_TIMING_FIELDS.items() if key in data}
    probe = Probe(handler=handler, **timing)
    if kind is not ProbeKind.READINESS and probe.success_threshold != 1:
        raise SpecError(f"{path}.successThreshold",
                        f"must be 1 for {kind.value} (Kubernetes rule), got "
                        f"{probe.success_threshold}")
    if kind is ProbeKind.READINESS and probe.termination_grace_period_seconds is not None:
        raise SpecError(f"{path}.terminationGracePeriodSeconds",
                        "is only allowed on livenessProbe and startupProbe")
    if probe.timeout_seconds > probe.period_seconds:
        raise SpecError(f"{path}.timeoutSeconds",
                        f"must not be above periodSeconds ({probe.timeout_seconds} > "
                        f"{probe.period_seconds}); raise periodSeconds or lower timeoutSeconds")
    return probe


def parse_watchdog(data: Any, path: str) -> Watchdog:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("name", "model", "action"), path)
    return Watchdog(
        name=_str(data.get("name", "watchdog"), f"{path}.name"),
        model=_enum(WatchdogModel, data.get("model", "i6300esb"), f"{path}.model"),
        action=_enum(WatchdogAction, data.get("action", "reset"), f"{path}.action"),
    )


def parse_spec(data: Any, path: str = "spec") -> HealthSpec:
    """Build a HealthSpec from its serialised (camelCase) form, validating everything."""
    data = _expect_mapping(data, path)
    _reject_unknown(data, SPEC_FIELDS, path)
    probes = {kind: parse_probe(data[kind.value], f"{path}.{kind.value}", kind)
              for kind in ProbeKind if data.get(kind.value) is not None}
    watchdog = None
    if data.get("watchdog") is not None:
        watchdog = parse_watchdog(data["watchdog"], f"{path}.watchdog")
    grace = DEFAULT_GRACE_PERIOD_SECONDS
    if data.get("terminationGracePeriodSeconds") is not None:
        grace = _int(data["terminationGracePeriodSeconds"],
                     f"{path}.terminationGracePeriodSeconds", 0)
    user_data = None
    if data.get("userData") is not None:
        user_data = _str(data["userData"], f"{path}.userData", allow_empty=True)
    return HealthSpec(
        liveness_probe=probes.get(ProbeKind.LIVENESS),
        readiness_probe=probes.get(ProbeKind.READINESS),
        startup_probe=probes.get(ProbeKind.STARTUP),
        watchdog=watchdog,
        termination_grace_period_seconds=grace,
        on_liveness_failure=_enum(LivenessAction, data.get("onLivenessFailure", "restart"),
                                  f"{path}.onLivenessFailure"),
        user_data=user_data,
    )


# ---------------------------------------------------------------------------
# Serialisation (model -> dict), the inverse of parse_spec
# ---------------------------------------------------------------------------

def _handler_to_dict(handler: Handler) -> tuple[str, dict[str, Any]]:
    if isinstance(handler, HttpGet):
        out: dict[str, Any] = {"port": handler.port, "path": handler.path}
        if handler.host is not None:
            out["host"] = handler.host
        out["scheme"] = handler.scheme.value
        if handler.http_headers:
            out["httpHeaders"] = [{"name": n, "value": v} for n, v in handler.http_headers]
        return "httpGet", out
    if isinstance(handler, TcpSocket):
        out = {"port": handler.port}
        if handler.host is not None:
            out["host"] = handler.host
        return "tcpSocket", out
    if isinstance(handler, Exec):
        return "exec", {"command": list(handler.command)}
    if isinstance(handler, GuestAgentPing):
        return "guestAgentPing", {}
    raise TypeError(f"unknown probe handler {handler!r}")


def probe_to_dict(probe: Probe) -> dict[str, Any]:
    name, body = _handler_to_dict(probe.handler)
    out: dict[str, Any] = {name: body}
    for key, (attr, _minimum) in PROBE_TIMING_FIELDS.items():
        value = getattr(probe, attr)
        if value is not None:
            out[key] = value
    return out


def spec_to_dict(spec: HealthSpec) -> dict[str, Any]:
    """Serialise with defaults spelled out, so `vmhealth show` tells the whole truth."""
    out: dict[str, Any] = {}
    for kind, probe in sorted(spec.probes().items(), key=lambda item: SPEC_FIELDS.index(
            item[0].value)):
        out[kind.value] = probe_to_dict(probe)
    if spec.watchdog is not None:
        out["watchdog"] = {"name": spec.watchdog.name, "model": spec.watchdog.model.value,
                           "action": spec.watchdog.action.value}
    out["terminationGracePeriodSeconds"] = spec.termination_grace_period_seconds
    out["onLivenessFailure"] = spec.on_liveness_failure.value
    if spec.user_data is not None:
        out["userData"] = spec.user_data
    return out
