"""The health spec's validation rules, over plain data: a dict in, a checked dict out.

Validation follows Kubernetes/KubeVirt admission; every error names the field path
and what is allowed, so an operator can fix the manifest without reading code.

This is the one home of the rules. vmhealth.spec builds its typed model (dataclasses,
enums) from what check_spec returns, so `vmhealth apply`, the daemon and the libvirt
hook all get the same verdict and the same message for the same input. The hook runs
check_spec while libvirt waits for a domain start, so this module imports nothing at
all: no enum, dataclasses, typing or re, whose imports together cost about three
times a bare interpreter start. Allowed values are therefore tuples of strings; a unit
test keeps vmhealth.spec's enums equal to them.

The checked form uses the model's attribute names (snake_case) with every default
filled in:

    {"liveness_probe": probe or None, "readiness_probe": ..., "startup_probe": ...,
     "watchdog": {"name", "model", "action"} or None,
     "termination_grace_period_seconds": int, "on_liveness_failure": str,
     "user_data": str or None}
    probe: {"handler": (handler field name, {its fields}), "initial_delay_seconds": int,
            ..., "termination_grace_period_seconds": int or None}
"""

from __future__ import annotations

DEFAULT_GRACE_PERIOD_SECONDS = 30  # Kubernetes' and KubeVirt's default
MAX_INT32 = 2**31 - 1

# Allowed values, in the order error messages list them.
SCHEMES = ("HTTP", "HTTPS")
WATCHDOG_MODELS = ("i6300esb", "ib700", "diag288", "itco")
# Every action libvirt's <watchdog action=...> accepts.
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")
LIVENESS_ACTIONS = ("restart", "reset", "poweroff", "none")
# The order in which a spec's probes are checked (and so which error is reported first).
PROBE_KINDS = ("livenessProbe", "readinessProbe", "startupProbe")
READINESS = "readinessProbe"
HANDLERS = ("httpGet", "tcpSocket", "exec", "guestAgentPing")

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
# Kubernetes' defaults; None: Kubernetes' probe-level grace override is not set.
PROBE_TIMING_DEFAULTS = {
    "initial_delay_seconds": 0,
    "period_seconds": 10,
    "timeout_seconds": 1,
    "success_threshold": 1,
    "failure_threshold": 3,
    "termination_grace_period_seconds": None,
}
# Kubernetes probe handlers vmhealth cannot run against a VM, with the reason.
UNSUPPORTED_HANDLERS = {
    "grpc": "gRPC probes are not supported; use httpGet, tcpSocket, exec or guestAgentPing",
}


# HTTP header names are RFC 7230 tokens: what goes on the wire unchanged. The probe
# handler (monitor/probes/http.py) asks the same functions, so a name `apply` accepts
# is one the daemon sends.
HEADER_NAME_PUNCTUATION = "!#$%&'*+-.^_`|~"
_TOKEN_CHARS = frozenset(HEADER_NAME_PUNCTUATION + "0123456789abcdefghijklmnopqrstuvwxyz"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_http_header_name(name: str) -> bool:
    """An RFC 7230 token: what an HTTP header name may be on the wire."""
    return bool(name) and _TOKEN_CHARS.issuperset(name)


def is_http_header_value(value: str) -> bool:
    """No CR, LF or NUL: a value that cannot end its header line or smuggle another."""
    return not ("\r" in value or "\n" in value or "\x00" in value)


class SpecError(ValueError):
    """An invalid spec. `path` is the field (e.g. spec.readinessProbe.httpGet.port)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# ---------------------------------------------------------------------------
# Field checks
# ---------------------------------------------------------------------------

def _expect_mapping(value: object, path: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(path, f"must be a mapping, not {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise SpecError(path, f"keys must be strings, not {_type_name(key)} ({key!r})")
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _reject_unknown(data: dict, allowed, path: str) -> None:
    for key in data:
        if key not in allowed:
            allowed_text = ", ".join(sorted(allowed)) or "none"
            raise SpecError(f"{path}.{key}", f"unknown field; allowed: {allowed_text}")


def _int(value: object, path: str, minimum: int, maximum: int = MAX_INT32) -> int:
    # bool is a subclass of int in Python; `port: true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, not {_type_name(value)} ({value!r})")
    if not minimum <= value <= maximum:
        raise SpecError(path, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _str(value: object, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, not {_type_name(value)}")
    if not allow_empty and not value:
        raise SpecError(path, "must not be empty")
    if "\x00" in value:
        raise SpecError(path, "must not contain NUL characters")
    return value


def _one_of(allowed: tuple[str, ...], value: object, path: str) -> str:
    text = _str(value, path)
    if text in allowed:
        return text
    raise SpecError(path, f"must be one of {', '.join(allowed)}, got {text!r}")


def _port(value: object, path: str) -> int:
    if isinstance(value, str):
        raise SpecError(path, f"must be a port number 1..65535; named ports ({value!r}) "
                              "have no meaning for a VM")
    return _int(value, path, 1, 65535)


def _host(value: object, path: str) -> str | None:
    if value is None:
        return None
    host = _str(value, path, allow_empty=True)
    if any(ch.isspace() for ch in host) or "/" in host:
        raise SpecError(path, f"must be a host name or IP address, got {host!r}")
    return host or None


# ---------------------------------------------------------------------------
# Handlers: each returns the handler's fields under the model's attribute names
# ---------------------------------------------------------------------------

def _check_http_get(data: object, path: str) -> dict:
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
        if not is_http_header_name(name):
            raise SpecError(f"{item_path}.name",
                            f"must be an HTTP header name: letters, digits and "
                            f"{HEADER_NAME_PUNCTUATION} only (RFC 7230 token), got {name!r}")
        value = _str(item.get("value", ""), f"{item_path}.value", allow_empty=True)
        if not is_http_header_value(value):
            raise SpecError(f"{item_path}.value", "must not contain line breaks")
        headers.append((name, value))
    # Port, host and scheme are checked after the headers: the order decides which
    # error a spec with several is told about first, and it is kept as it always was.
    port = _port(data["port"], f"{path}.port")
    host = _host(data.get("host"), f"{path}.host")
    scheme = _one_of(SCHEMES, data.get("scheme", "HTTP"), f"{path}.scheme")
    return {"port": port, "path": url_path, "host": host, "scheme": scheme,
            "http_headers": tuple(headers)}


def _check_tcp_socket(data: object, path: str) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("port", "host"), path)
    if "port" not in data:
        raise SpecError(f"{path}.port", "is required (the guest's port, 1..65535)")
    return {"port": _port(data["port"], f"{path}.port"),
            "host": _host(data.get("host"), f"{path}.host")}


def _check_exec(data: object, path: str) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("command",), path)
    command = data.get("command")
    if not isinstance(command, list) or not command:
        raise SpecError(f"{path}.command",
                        "must be a non-empty list: the program and its arguments, "
                        "e.g. [\"cat\", \"/tmp/healthy.txt\"]")
    return {"command": tuple(_str(arg, f"{path}.command[{i}]", allow_empty=i > 0)
                             for i, arg in enumerate(command))}


def _check_guest_agent_ping(data: object, path: str) -> dict:
    data = _expect_mapping(data if data is not None else {}, path)
    _reject_unknown(data, (), path)
    return {}


HANDLER_CHECKS = {
    "httpGet": _check_http_get,
    "tcpSocket": _check_tcp_socket,
    "exec": _check_exec,
    "guestAgentPing": _check_guest_agent_ping,
}


def check_handler(name: str, data: object, path: str) -> dict:
    """The fields of probe handler `name` (one of HANDLERS), checked."""
    return HANDLER_CHECKS[name](data, path)


# ---------------------------------------------------------------------------
# Probe, watchdog, spec
# ---------------------------------------------------------------------------

def check_probe(data: object, path: str, kind: str) -> dict:
    """A probe of `kind` (one of PROBE_KINDS), checked; see the module docstring."""
    data = _expect_mapping(data, path)
    for name, reason in UNSUPPORTED_HANDLERS.items():
        if name in data:
            raise SpecError(f"{path}.{name}", reason)
    _reject_unknown(data, set(HANDLERS) | set(PROBE_TIMING_FIELDS), path)
    handlers = [name for name in HANDLERS if name in data]
    if len(handlers) != 1:
        found = ", ".join(handlers) if handlers else "none"
        raise SpecError(path, f"must have exactly one handler of httpGet, tcpSocket, exec, "
                              f"guestAgentPing (found: {found})")
    handler_name = handlers[0]
    handler = check_handler(handler_name, data[handler_name], f"{path}.{handler_name}")
    probe = {"handler": (handler_name, handler)}
    probe.update(PROBE_TIMING_DEFAULTS)
    for key, (attr, minimum) in PROBE_TIMING_FIELDS.items():
        if key in data:
            probe[attr] = _int(data[key], f"{path}.{key}", minimum)
    if kind != READINESS and probe["success_threshold"] != 1:
        raise SpecError(f"{path}.successThreshold",
                        f"must be 1 for {kind} (Kubernetes rule), got "
                        f"{probe['success_threshold']}")
    if kind == READINESS and probe["termination_grace_period_seconds"] is not None:
        raise SpecError(f"{path}.terminationGracePeriodSeconds",
                        "is only allowed on livenessProbe and startupProbe")
    if probe["timeout_seconds"] > probe["period_seconds"]:
        raise SpecError(f"{path}.timeoutSeconds",
                        f"must not be above periodSeconds ({probe['timeout_seconds']} > "
                        f"{probe['period_seconds']}); raise periodSeconds or lower "
                        "timeoutSeconds")
    return probe


def check_watchdog(data: object, path: str) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("name", "model", "action"), path)
    return {
        "name": _str(data.get("name", "watchdog"), f"{path}.name"),
        "model": _one_of(WATCHDOG_MODELS, data.get("model", "i6300esb"), f"{path}.model"),
        "action": _one_of(WATCHDOG_ACTIONS, data.get("action", "reset"), f"{path}.action"),
    }


def check_spec(data: object, path: str = "spec") -> dict:
    """A whole spec in its serialised (camelCase) form, checked; raises SpecError."""
    data = _expect_mapping(data, path)
    _reject_unknown(data, SPEC_FIELDS, path)
    probes = {kind: check_probe(data[kind], f"{path}.{kind}", kind)
              for kind in PROBE_KINDS if data.get(kind) is not None}
    watchdog = None
    if data.get("watchdog") is not None:
        watchdog = check_watchdog(data["watchdog"], f"{path}.watchdog")
    grace = DEFAULT_GRACE_PERIOD_SECONDS
    if data.get("terminationGracePeriodSeconds") is not None:
        grace = _int(data["terminationGracePeriodSeconds"],
                     f"{path}.terminationGracePeriodSeconds", 0)
    user_data = None
    if data.get("userData") is not None:
        user_data = _str(data["userData"], f"{path}.userData", allow_empty=True)
    return {
        "liveness_probe": probes.get("livenessProbe"),
        "readiness_probe": probes.get("readinessProbe"),
        "startup_probe": probes.get("startupProbe"),
        "watchdog": watchdog,
        "termination_grace_period_seconds": grace,
        "on_liveness_failure": _one_of(LIVENESS_ACTIONS,
                                       data.get("onLivenessFailure", "restart"),
                                       f"{path}.onLivenessFailure"),
        "user_data": user_data,
    }
