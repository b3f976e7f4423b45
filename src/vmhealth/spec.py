"""The health spec: probes, watchdog and liveness outcome for one domain.

The model mirrors the Kubernetes/KubeVirt probe API (camelCase field names in the
serialised form) so that a KubeVirt manifest's probes carry over unchanged.
Validation follows Kubernetes/KubeVirt admission; every error names the field path
and what is allowed, so an operator can fix the manifest without reading code.

The rules themselves live in vmhealth.spec_rules, over plain data, and this module
builds its typed model from what they return (its enums from the rules' tuples of
allowed values, which are written there only): the libvirt hook checks specs with
spec_rules alone, because importing dataclasses, enum and typing would triple its run
time, and the verdict stays the same everywhere. Standard library only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

from vmhealth import spec_rules as _rules
from vmhealth.spec_rules import (  # noqa: F401 - part of this module's API
    DEFAULT_GRACE_PERIOD_SECONDS,
    MAX_INT32,
    PROBE_TIMING_FIELDS,
    SPEC_FIELDS,
    UNSUPPORTED_HANDLERS,
    SpecError,
    SpecWarning,
    is_http_header_name,
    is_http_header_value,
)


def _member_name(value: str) -> str:
    """The enum member name for an allowed value: inject-nmi -> INJECT_NMI,
    RerunOnFailure -> RERUN_ON_FAILURE, HTTPS -> HTTPS."""
    out = []
    for index, ch in enumerate(value):
        if ch.isupper() and index and value[index - 1].islower():
            out.append("_")
        out.append("_" if ch == "-" else ch.upper())
    return "".join(out)


def _values_enum(base: type[enum.Enum], name: str, values: tuple[str, ...],
                 member_name=_member_name):
    """A str enum of `values`, which vmhealth.spec_rules holds: the allowed values
    are written once, there (the hook cannot afford enum)."""
    return base(name, [(member_name(value), value) for value in values],
                module=__name__, qualname=name)


class _StrEnum(str, enum.Enum):
    pass


class _ProbeKindBase(str, enum.Enum):
    @property
    def short(self) -> str:
        return self.value[: -len("Probe")]


class _RunStrategyBase(str, enum.Enum):
    """What happens when a domain stops without an operator asking (README, Run
    strategies); the meaning is spec_rules.RUN_STRATEGY_RESTARTS'."""

    @property
    def restarts_after_failure(self) -> bool:
        """Start it again after a crash, a watchdog action or a liveness action."""
        return _rules.RUN_STRATEGY_RESTARTS[self.value][0]

    @property
    def restarts_after_guest_shutdown(self) -> bool:
        """Start it again after a clean shutdown from inside the guest."""
        return _rules.RUN_STRATEGY_RESTARTS[self.value][1]


Scheme = _values_enum(_StrEnum, "Scheme", _rules.SCHEMES)
WatchdogModel = _values_enum(_StrEnum, "WatchdogModel", _rules.WATCHDOG_MODELS)
# Every action libvirt's <watchdog action=...> accepts.
WatchdogAction = _values_enum(_StrEnum, "WatchdogAction", _rules.WATCHDOG_ACTIONS)
# What the daemon does once liveness crosses its failure threshold (spec_rules says
# what each means).
LivenessAction = _values_enum(_StrEnum, "LivenessAction", _rules.LIVENESS_ACTIONS)
# LIVENESS, READINESS, STARTUP
ProbeKind = _values_enum(_ProbeKindBase, "ProbeKind", _rules.PROBE_KINDS,
                         lambda value: _member_name(value[: -len("Probe")]))
RunStrategy = _values_enum(_RunStrategyBase, "RunStrategy", _rules.RUN_STRATEGIES)


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
    on_liveness_failure: LivenessAction = LivenessAction(_rules.DEFAULT_LIVENESS_ACTION)
    run_strategy: RunStrategy = RunStrategy(_rules.DEFAULT_RUN_STRATEGY)
    # KubeVirt's kubevirt.io/pause-guest-agent-probes: guestAgentPing probes succeed
    # without asking the agent (README, "Pausing guest-agent pings").
    guest_agent_ping_paused: bool = False
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


# ---------------------------------------------------------------------------
# Parsing: the rules in vmhealth.spec_rules, then the typed model built from them
# ---------------------------------------------------------------------------

def _http_get(fields: dict[str, Any]) -> HttpGet:
    return HttpGet(port=fields["port"], path=fields["path"], host=fields["host"],
                   scheme=Scheme(fields["scheme"]), http_headers=fields["http_headers"])


_HANDLER_MODELS = {
    "httpGet": _http_get,
    "tcpSocket": lambda fields: TcpSocket(**fields),
    "exec": lambda fields: Exec(**fields),
    "guestAgentPing": lambda _fields: GuestAgentPing(),
}


def probe_from_checked(checked: dict[str, Any]) -> Probe:
    """The Probe for a probe as vmhealth.spec_rules.check_probe returns it."""
    name, fields = checked["handler"]
    timing = {attr: value for attr, value in checked.items() if attr != "handler"}
    return Probe(handler=_HANDLER_MODELS[name](fields), **timing)


def watchdog_from_checked(checked: dict[str, Any]) -> Watchdog:
    return Watchdog(name=checked["name"], model=WatchdogModel(checked["model"]),
                    action=WatchdogAction(checked["action"]))


def spec_from_checked(checked: dict[str, Any]) -> HealthSpec:
    """The HealthSpec for a spec as vmhealth.spec_rules.check_spec returns it."""
    probes = {attr: probe_from_checked(checked[attr]) if checked[attr] is not None else None
              for attr in ("liveness_probe", "readiness_probe", "startup_probe")}
    watchdog = checked["watchdog"]
    return HealthSpec(
        **probes,
        watchdog=watchdog_from_checked(watchdog) if watchdog is not None else None,
        termination_grace_period_seconds=checked["termination_grace_period_seconds"],
        on_liveness_failure=LivenessAction(checked["on_liveness_failure"]),
        run_strategy=RunStrategy(checked["run_strategy"]),
        guest_agent_ping_paused=checked["guest_agent_ping_paused"],
        user_data=checked["user_data"],
    )


def parse_spec(data: Any, path: str = "spec", *, named_ports: dict | None = None,
               warnings: list[SpecWarning] | None = None) -> HealthSpec:
    """Build a HealthSpec from its serialised (camelCase) form, validating everything.

    `named_ports`, `warnings`: as vmhealth.spec_rules.check_spec takes them."""
    return spec_from_checked(_rules.check_spec(data, path, named_ports=named_ports,
                                               warnings=warnings))


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
    out["runStrategy"] = spec.run_strategy.value
    out["guestAgentPingPaused"] = spec.guest_agent_ping_paused
    if spec.user_data is not None:
        out["userData"] = spec.user_data
    return out
