"""CLI commands of the host monitor: daemon, status, wait, events, probe.

All but `daemon` talk to the running daemon over its API socket. Exit codes: 0 ok,
1 not ready/not live/failed/unreachable/timed out, 2 bad usage or configuration.
`vmhealth status DOMAIN` exits 1 unless the domain is live and ready, so a cluster
manager (Pacemaker VirtualDomain's monitor_scripts) can call it as is.

Everything shown from the daemon (reasons, messages, names, its errors) is printed
through vmhealth.terminal, which escapes control characters: it may quote a guest.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from typing import Any

import click

from vmhealth.monitor.client import DEFAULT_SOCKET, ApiClient, ApiError, ApiUnavailable
from vmhealth.spec import ProbeKind
from vmhealth.terminal import echo, for_terminal

WAIT_POLL_SECONDS = 1.0
# `vmhealth probe` waits out the daemon's rate limit (429 + Retry-After) this long at most.
PROBE_RETRY_SECONDS = 5.0
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


class Failure(click.ClickException):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(for_terminal(message))


class UsageFailure(click.ClickException):
    exit_code = 2


def parse_duration(text: str) -> float:
    """'5m', '90s', '1h30m', '45' (seconds) -> seconds."""
    match = DURATION.match(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise click.BadParameter(f"{text!r} is not a duration; use e.g. 30s, 5m or 1h30m")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


socket_option = click.option(
    "--socket", "socket_path", envvar="VMHEALTH_SOCKET", default=DEFAULT_SOCKET,
    show_default=True, help="The daemon's API socket.")
output_option = click.option("-o", "--output", type=click.Choice(["text", "json"]),
                             default="text", show_default=True, help="Output format.")


def _client(socket_path: str) -> ApiClient:
    return ApiClient(socket_path)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (ApiUnavailable, ApiError) as exc:
        raise Failure(str(exc)) from None


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _yes_no(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def _print_domain(entry: dict[str, Any]) -> None:
    echo(f"{entry['name']} ({entry['uuid']}): state {entry.get('state', 'unknown')}, "
               f"ready {_yes_no(entry['ready'])}, live {_yes_no(entry['live'])}")
    if entry.get("suppressed"):
        echo(f"  failures not counted: domain is {entry['suppressed']}")
    if entry.get("action"):
        action = entry["action"]
        echo(f"  liveness action {action['action']}: {action['phase']}")
    for kind, probe in entry.get("probes", {}).items():
        echo(f"  {kind}: {_healthy_word(kind, probe['healthy'])} - {probe['reason']} "
                   f"(since {_when(probe['since'])})")
        last = probe.get("lastResult")
        if last:
            counted = "" if last["counted"] else ", not counted"
            lane = ", repeated by the native lane" if probe.get("nativeLane") else ""
            echo(f"    last: {last['outcome']} at {_when(last['time'])} in "
                       f"{last['duration'] * 1000:.0f} ms{counted}{lane}: {last['message']}")


def _healthy_word(kind: str, healthy: bool | None) -> str:
    words = {"readiness": ("ready", "not ready"), "liveness": ("alive", "failing"),
             "startup": ("started", "not started")}.get(kind, ("healthy", "unhealthy"))
    if healthy is None:
        return "unknown"
    return words[0] if healthy else words[1]


@click.command("daemon")
@click.option("--config", "config_path", envvar="VMHEALTH_CONFIG",
              default="/etc/vmhealth/vmhealth.conf", show_default=True,
              help="Configuration file (a missing file means all defaults).")
def daemon_command(config_path: str) -> None:
    """Run the host monitor daemon (systemd starts it as vmhealth.service)."""
    from vmhealth.monitor.config import ConfigError, load_config
    from vmhealth.monitor.daemon import serve
    from vmhealth.monitor.logfmt import setup_logging

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    setup_logging(config.log_level)
    raise_open_file_limit()
    asyncio.run(serve(config))


def raise_open_file_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a probe in flight holds a socket, and
    1,000 domains probed every second against slow guests can hold more than systemd's
    default soft limit of 1,024. Safe: the daemon waits with epoll, never select()."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass  # keep the limit we have; probes report a host error if it runs out


@click.command("status")
@click.argument("domain", required=False)
@output_option
@socket_option
def status_command(domain: str | None, output: str, socket_path: str) -> None:
    """Health of every monitored domain, or of one (exit 1 unless live and ready)."""
    client = _client(socket_path)
    data = _call(client.status, domain)
    if output == "json":
        echo(json.dumps(data, indent=2))
    elif domain:
        _print_domain(data)
    else:
        if not data["libvirtConnected"]:
            echo("warning: the daemon is not connected to libvirt", err=True)
        if not data["domains"]:
            echo("no domain is monitored")
        for entry in data["domains"]:
            _print_domain(entry)
    if domain and not (data["ready"] and data["live"]):
        raise SystemExit(1)


@click.command("wait")
@click.argument("domain")
@click.option("--for", "condition", type=click.Choice(["ready", "live"]), required=True,
              help="What to wait for.")
@click.option("--timeout", default="5m", show_default=True,
              help="Give up after this long (e.g. 30s, 5m, 1h).")
@socket_option
def wait_command(domain: str, condition: str, timeout: str, socket_path: str) -> None:
    """Wait until DOMAIN is ready (or live), like `kubectl wait`."""
    seconds = parse_duration(timeout)
    client = _client(socket_path)
    deadline = time.monotonic() + seconds
    last_problem = "no answer yet"
    while True:
        try:
            entry = client.status(domain)
            if entry.get(condition):
                echo(f"{domain}: {condition}")
                return
            last_problem = "; ".join(f"{kind}: {p['reason']}"
                                     for kind, p in entry.get("probes", {}).items()) \
                or f"not {condition}"
        except ApiError as exc:
            last_problem = str(exc)  # not adopted yet: keep waiting
        except ApiUnavailable as exc:
            last_problem = str(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure(f"{domain}: not {condition} after {timeout} ({last_problem})")
        time.sleep(min(WAIT_POLL_SECONDS, remaining))


@click.command("events")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--domain", help="Only this domain's events.")
@output_option
@socket_option
def events_command(follow: bool, domain: str | None, output: str, socket_path: str) -> None:
    """Recent events (probe state changes, actions, watchdog, agent), oldest first."""
    client = _client(socket_path)
    try:
        for event in client.events(follow=follow, domain=domain):
            if output == "json":
                echo(json.dumps(event))
            else:
                where = event["domain"] or "-"
                echo(f"{_when(event['time'])}  {where:<20} {event['type']:<20} "
                           f"{event['message']}")
    except ApiUnavailable as exc:
        raise Failure(str(exc)) from None
    except KeyboardInterrupt:
        pass


@click.command("probe")
@click.argument("domain")
@click.argument("kind", type=click.Choice([kind.short for kind in ProbeKind]))
@output_option
@socket_option
def probe_command(domain: str, kind: str, output: str, socket_path: str) -> None:
    """Run one probe of DOMAIN now and print the result (exit 1 unless it succeeds)."""
    result = _call(_probe_waiting_out_the_rate_limit, _client(socket_path), domain, kind)
    if output == "json":
        echo(json.dumps(result, indent=2))
    else:
        echo(f"{domain} {kind}: {result['outcome']} in {result['duration'] * 1000:.0f} "
                   f"ms: {result['message']}")
    if result["outcome"] != "success":
        raise SystemExit(1)



def _probe_waiting_out_the_rate_limit(client: ApiClient, domain: str, kind: str) -> Any:
    """One probe run; if the daemon ran this probe a moment ago (429), wait as long as
    it asks (Retry-After), up to PROBE_RETRY_SECONDS in all, and ask again."""
    deadline = time.monotonic() + PROBE_RETRY_SECONDS
    while True:
        try:
            return client.probe(domain, kind)
        except ApiError as exc:
            wait = exc.retry_after
            if exc.status != 429 or wait is None or time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)
