"""The health spec's validation rules, over plain data: a dict in, a checked dict out.

Validation follows Kubernetes/KubeVirt admission; every error names the field path
and what is allowed, so an operator can fix the manifest without reading code.

This is the one home of the rules. vmhealth.spec builds its typed model (dataclasses,
enums) from what check_spec returns, so `vmhealth apply`, the daemon and the libvirt
hook all get the same verdict and the same message for the same input. The hook runs
check_spec while libvirt waits for a domain start, so this module imports nothing at
all: no enum, dataclasses, typing or re, whose imports together cost about three
times a bare interpreter start. Allowed values are therefore tuples of strings, and
vmhealth.spec builds its enums from these tuples.

The checked form uses the model's attribute names (snake_case) with every default
filled in:

    {"liveness_probe": probe or None, "readiness_probe": ..., "startup_probe": ...,
     "watchdog": {"name", "model", "action"} or None,
     "termination_grace_period_seconds": int, "on_liveness_failure": str,
     "run_strategy": str, "guest_agent_ping_paused": bool, "user_data": str or None}
    probe: {"handler": (handler field name, {its fields}), "initial_delay_seconds": int,
            ..., "termination_grace_period_seconds": int or None}

Two things besides the data may be handed to check_spec (both optional, so the hook
and the daemon, which read a stored spec, pass neither):
- `named_ports`: {name: (port, where it is declared)} from a KubeVirt manifest's
  spec.domain.devices.interfaces[].ports[], through which httpGet/tcpSocket ports
  given by name resolve, as KubeVirt resolves them (the stored spec holds the number);
- `warnings`: a list that collects SpecWarning for what is accepted, as Kubernetes
  accepts it, but deserves a word to the operator (`vmhealth apply` prints them).
"""

from __future__ import annotations

DEFAULT_GRACE_PERIOD_SECONDS = 30  # Kubernetes' and KubeVirt's default
MAX_INT32 = 2**31 - 1

# Allowed values, in the order error messages list them.
SCHEMES = ("HTTP", "HTTPS")
WATCHDOG_MODELS = ("i6300esb", "ib700", "diag288", "itco")
# Every action libvirt's <watchdog action=...> accepts.
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")
# What the daemon does once liveness crosses its failure threshold:
#   restart   graceful shutdown for the grace period, destroy, start again
#   reset     hard reset of the running domain
#   poweroff  destroy and leave it off (runStrategy may start it again)
#   none      report only
#   report    report only, because a cluster manager (Pacemaker) acts on the failure
#             (docs/cluster.md): as none, and refused with a runStrategy that starts
#             the domain again, since the cluster alone decides where it runs
# The actions in which vmhealth itself changes the domain (not none or report).
ACTING_LIVENESS_ACTIONS = ("restart", "reset", "poweroff")
LIVENESS_ACTIONS = (*ACTING_LIVENESS_ACTIONS, "none", "report")
REPORT_ACTION = "report"
DEFAULT_LIVENESS_ACTION = "restart"
# The order in which a spec's probes are checked (and so which error is reported first).
PROBE_KINDS = ("livenessProbe", "readinessProbe", "startupProbe")
READINESS = "readinessProbe"
HANDLERS = ("httpGet", "tcpSocket", "exec", "guestAgentPing")

# KubeVirt's VirtualMachine run strategies (staging/src/kubevirt.io/api/core/v1/
# types.go, VirtualMachineRunStrategy) and what each means when a domain stops
# without an operator asking (README, "Run strategies"): (start it again after a
# failure, start it again after the guest shut itself down). A failure: the domain
# crashed, or stopped by a watchdog action or a liveness action; KubeVirt calls that
# run Failed, and a clean shutdown from inside the guest Succeeded
# (pkg/virt-handler/vm.go), which RerunOnFailure does not start again
# (pkg/virt-controller/watch/vm/vm.go).
RUN_STRATEGY_RESTARTS = {
    "Always": (True, True),
    "RerunOnFailure": (True, False),
    "Manual": (False, False),
    "Halted": (False, False),
    "Once": (False, False),
}
RUN_STRATEGIES = tuple(RUN_STRATEGY_RESTARTS)
# Nothing is started again: what vmhealth did before it read run strategies.
DEFAULT_RUN_STRATEGY = "Manual"
# KubeVirt run strategies with no meaning on plain libvirt, with the reason.
UNSUPPORTED_RUN_STRATEGIES = {
    "WaitAsReceiver": "waits for a KubeVirt decentralized live migration, which plain "
                      "libvirt has no counterpart of",
}

SPEC_FIELDS = (
    *PROBE_KINDS,
    "watchdog",
    "terminationGracePeriodSeconds",
    "onLivenessFailure",
    "runStrategy",
    "guestAgentPingPaused",
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
# Fields where 0 means the default: Kubernetes' SetDefaults_Probe
# (pkg/apis/core/v1/defaults.go) replaces 0 by the default in exactly these four, and
# KubeVirt's (staging/src/kubevirt.io/api/core/v1/defaults.go) does the same (it also
# turns negative values into the default, where Kubernetes refuses them: so do we).
# initialDelaySeconds' default is 0 itself.
ZERO_MEANS_DEFAULT = ("periodSeconds", "timeoutSeconds", "successThreshold",
                      "failureThreshold")
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


# HTTP header names are RFC 7230 tokens (tchar): what goes on the wire unchanged, and
# what kubelet's HTTP client accepts (Go net/http refuses any other name,
# golang.org/x/net/http/httpguts ValidHeaderFieldName). The Kubernetes API is stricter
# for a pod's probes (letters, digits and '-': kubernetes/kubernetes
# staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go IsHTTPHeaderName),
# so every name a Kubernetes manifest can carry passes here too. The probe handler
# (monitor/probes/http.py) asks the same functions, so a name `apply` accepts is one
# the daemon sends.
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


class SpecWarning:
    """Something accepted (as Kubernetes/KubeVirt accept it) that the operator should
    hear about: `path` names the field, as in SpecError."""

    __slots__ = ("path", "message")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def __repr__(self) -> str:
        return f"SpecWarning({self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecWarning):
            return NotImplemented
        return (self.path, self.message) == (other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.path, self.message))


def _warn(warnings: list | None, path: str, message: str) -> None:
    if warnings is not None:
        warnings.append(SpecWarning(path, message))


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


def _port(value: object, path: str, named_ports: dict | None) -> int:
    if isinstance(value, str):
        return _named_port(value, path, named_ports)
    return _int(value, path, 1, 65535)


def _named_port(name: str, path: str, named_ports: dict | None) -> int:
    """A port given by name, resolved as KubeVirt does: through the names the VMI
    declares in spec.domain.devices.interfaces[].ports[] (KubeVirt renders them as the
    pod's container ports, and kubelet looks the probe's port name up there)."""
    if name.isdigit():
        raise SpecError(path, f"must be a port number 1..65535, got the string {name!r}; "
                              "write it without quotes")
    if named_ports is None:
        raise SpecError(path, f"must be a port number 1..65535, got the name {name!r}: "
                              "port names come from a KubeVirt manifest's "
                              "spec.domain.devices.interfaces[].ports[], which a vmhealth "
                              "spec does not have; write the port number")
    found = named_ports.get(name)
    if found is None:
        declared = ", ".join(sorted(named_ports)[:10]) or "none"
        raise SpecError(path, f"names port {name!r}, which is not declared in "
                              f"{_vmi_spec_path(path)}.domain.devices.interfaces[].ports[] "
                              f"(declared: {declared}); declare it there "
                              f"({{name: {name}, port: N}}) or write the port number")
    number, declared_at = found
    return _int(number, declared_at, 1, 65535)


def _vmi_spec_path(probe_field_path: str) -> str:
    """spec.template.spec for spec.template.spec.readinessProbe.httpGet.port."""
    for kind in PROBE_KINDS:
        head, found, _tail = probe_field_path.partition(f".{kind}.")
        if found:
            return head
    return "spec"


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

def _url_path(value: object, path: str) -> str:
    url_path = _str(value, path, allow_empty=True)
    if any(ch in url_path for ch in "\r\n "):
        raise SpecError(path, "must not contain spaces or line breaks")
    # kubelet puts the path into a URL with the probe's host, and a URL with a host
    # has an absolute path: "healthz" is requested as "/healthz", "" as "/"
    # (pkg/probe/http/request.go, formatURL; Go's url.URL adds the "/").
    return url_path if url_path.startswith("/") else "/" + url_path


def _check_http_get(data: object, path: str, named_ports: dict | None = None) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("port", "path", "host", "scheme", "httpHeaders"), path)
    if "port" not in data:
        raise SpecError(f"{path}.port", "is required (the guest's port, 1..65535)")
    url_path = _url_path(data.get("path", "/"), f"{path}.path")
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
    port = _port(data["port"], f"{path}.port", named_ports)
    host = _host(data.get("host"), f"{path}.host")
    scheme = _one_of(SCHEMES, data.get("scheme", "HTTP"), f"{path}.scheme")
    return {"port": port, "path": url_path, "host": host, "scheme": scheme,
            "http_headers": tuple(headers)}


def _check_tcp_socket(data: object, path: str, named_ports: dict | None = None) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("port", "host"), path)
    if "port" not in data:
        raise SpecError(f"{path}.port", "is required (the guest's port, 1..65535)")
    return {"port": _port(data["port"], f"{path}.port", named_ports),
            "host": _host(data.get("host"), f"{path}.host")}


def _check_exec(data: object, path: str, _named_ports: dict | None = None) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("command",), path)
    command = data.get("command")
    if not isinstance(command, list) or not command:
        raise SpecError(f"{path}.command",
                        "must be a non-empty list: the program and its arguments, "
                        "e.g. [\"cat\", \"/tmp/healthy.txt\"]")
    return {"command": tuple(_str(arg, f"{path}.command[{i}]", allow_empty=i > 0)
                             for i, arg in enumerate(command))}


def _check_guest_agent_ping(data: object, path: str, _named_ports: dict | None = None
                            ) -> dict:
    data = _expect_mapping(data if data is not None else {}, path)
    _reject_unknown(data, (), path)
    return {}


HANDLER_CHECKS = {
    "httpGet": _check_http_get,
    "tcpSocket": _check_tcp_socket,
    "exec": _check_exec,
    "guestAgentPing": _check_guest_agent_ping,
}


def check_handler(name: str, data: object, path: str, named_ports: dict | None = None
                  ) -> dict:
    """The fields of probe handler `name` (one of HANDLERS), checked."""
    return HANDLER_CHECKS[name](data, path, named_ports)


# ---------------------------------------------------------------------------
# Probe, watchdog, spec
# ---------------------------------------------------------------------------

def check_probe(data: object, path: str, kind: str, *, named_ports: dict | None = None,
                warnings: list | None = None) -> dict:
    """A probe of `kind` (one of PROBE_KINDS), checked; see the module docstring."""
    data = _expect_mapping(data, path)
    for name, reason in UNSUPPORTED_HANDLERS.items():
        if name in data:
            raise SpecError(f"{path}.{name}", reason)
    _reject_unknown(data, set(HANDLERS) | set(PROBE_TIMING_FIELDS), path)
    handlers = [name for name in HANDLERS if name in data]
    if len(handlers) != 1:
        found = ", ".join(handlers) if handlers else "none"
        raise SpecError(path, f"must have exactly one handler of {', '.join(HANDLERS)} "
                              f"(found: {found})")
    handler_name = handlers[0]
    handler = check_handler(handler_name, data[handler_name], f"{path}.{handler_name}",
                            named_ports)
    probe = {"handler": (handler_name, handler)}
    probe.update(PROBE_TIMING_DEFAULTS)
    for key in PROBE_TIMING_FIELDS:
        if data.get(key) is not None:
            _set_timing(probe, key, data[key], f"{path}.{key}")
    _check_probe_kind_rules(probe, path, kind)
    if probe["timeout_seconds"] > probe["period_seconds"]:
        _warn(warnings, f"{path}.timeoutSeconds",
              f"{probe['timeout_seconds']} is above periodSeconds "
              f"({probe['period_seconds']}); accepted, as Kubernetes does: a probe still "
              "running when the next is due makes that one wait for the next period "
              "(lower timeoutSeconds or raise periodSeconds to probe every period)")
    return probe


def _set_timing(probe: dict, key: str, value: object, path: str) -> None:
    attr, minimum = PROBE_TIMING_FIELDS[key]
    if key not in ZERO_MEANS_DEFAULT:
        probe[attr] = _int(value, path, minimum)
        return
    default = PROBE_TIMING_DEFAULTS[attr]
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise SpecError(path, f"must be between {minimum} and {MAX_INT32} (or 0 for the "
                              f"default, {default}), got {value}")
    if _int(value, path, 0) != 0:
        probe[attr] = value


def _check_probe_kind_rules(probe: dict, path: str, kind: str) -> None:
    """Kubernetes' rules per probe kind (pkg/apis/core/validation/validation.go:
    validateLivenessProbe, validateStartupProbe, validateReadinessProbe)."""
    if kind != READINESS and probe["success_threshold"] != 1:
        raise SpecError(f"{path}.successThreshold",
                        f"must be 1 for {kind} (Kubernetes rule), got "
                        f"{probe['success_threshold']}")
    if kind == READINESS and probe["termination_grace_period_seconds"] is not None:
        others = " and ".join(other for other in PROBE_KINDS if other != READINESS)
        raise SpecError(f"{path}.terminationGracePeriodSeconds",
                        f"is only allowed on {others}")


def check_watchdog(data: object, path: str) -> dict:
    data = _expect_mapping(data, path)
    _reject_unknown(data, ("name", "model", "action"), path)
    return {
        "name": _str(data.get("name", "watchdog"), f"{path}.name"),
        "model": _one_of(WATCHDOG_MODELS, data.get("model", "i6300esb"), f"{path}.model"),
        "action": _one_of(WATCHDOG_ACTIONS, data.get("action", "reset"), f"{path}.action"),
    }


def check_run_strategy(value: object, path: str) -> str:
    """A KubeVirt run strategy vmhealth can honour on plain libvirt."""
    text = _str(value, path)
    reason = UNSUPPORTED_RUN_STRATEGIES.get(text)
    if reason is not None:
        raise SpecError(path, f"{text} {reason}; use one of {', '.join(RUN_STRATEGIES)} "
                              "(README, Run strategies)")
    return _one_of(RUN_STRATEGIES, text, path)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, not {_type_name(value)} ({value!r})")
    return value


def check_spec(data: object, path: str = "spec", *, named_ports: dict | None = None,
               warnings: list | None = None) -> dict:
    """A whole spec in its serialised (camelCase) form, checked; raises SpecError.

    `named_ports` and `warnings`: see the module docstring."""
    data = _expect_mapping(data, path)
    _reject_unknown(data, SPEC_FIELDS, path)
    probes = {kind: check_probe(data[kind], f"{path}.{kind}", kind, named_ports=named_ports,
                                warnings=warnings)
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
    action = _one_of(LIVENESS_ACTIONS, data.get("onLivenessFailure", DEFAULT_LIVENESS_ACTION),
                     f"{path}.onLivenessFailure")
    run_strategy = _optional(check_run_strategy, data, "runStrategy", path,
                             DEFAULT_RUN_STRATEGY)
    if action == REPORT_ACTION and any(RUN_STRATEGY_RESTARTS[run_strategy]):
        raise SpecError(f"{path}.runStrategy", f"{run_strategy} starts the domain again, but "
                        "onLivenessFailure: report leaves that to the cluster; use Manual "
                        "(docs/cluster.md)")
    return {
        "liveness_probe": probes.get("livenessProbe"),
        "readiness_probe": probes.get("readinessProbe"),
        "startup_probe": probes.get("startupProbe"),
        "watchdog": watchdog,
        "termination_grace_period_seconds": grace,
        "on_liveness_failure": action,
        "run_strategy": run_strategy,
        "guest_agent_ping_paused": _optional(_bool, data, "guestAgentPingPaused", path, False),
        "user_data": user_data,
    }


def _optional(check, data: dict, key: str, path: str, default):
    """data[key] checked, or `default` when it is absent or null (as Kubernetes reads
    an omitted field)."""
    value = data.get(key)
    return default if value is None else check(value, f"{path}.{key}")
