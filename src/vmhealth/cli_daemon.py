"""CLI commands of the host monitor: daemon, status, wait, events, probe.

All but `daemon` talk to the running daemon over its API socket. Exit codes as
vmhealth.cli_context says: 0 ok, 1 not ready/not live/failed/unreachable/timed out,
2 bad usage or configuration. `vmhealth status DOMAIN` exits 1 unless the domain is
live and ready; a cluster's monitor (Pacemaker VirtualDomain's monitor_scripts) calls
`vmhealth check --liveness` instead (cli_check, docs/cluster.md), which neither
readiness nor an unreachable daemon fails.

Everything shown from the daemon (reasons, messages, names, its errors) is printed
through vmhealth.terminal, which escapes control characters: it may quote a guest.
The tables of `status` and `events` (vmhealth.status_table) escape every cell the
same way before measuring it, and only then add colours of their own.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import click
import yaml

from vmhealth.cli_context import Failure, NotOk, UsageFailure
from vmhealth.connection import HOST_PART
from vmhealth.monitor.client import DEFAULT_SOCKET, ApiClient, ApiError, ApiUnavailable
from vmhealth.monitor.config import DEFAULT_PATH as DEFAULT_CONFIG_PATH
from vmhealth.spec import ProbeKind
from vmhealth.status_table import (
    EVENT_COLUMNS,
    FOLLOW_WIDTHS,
    Table,
    event_row,
    events_table,
    render,
    status_table,
)
from vmhealth.terminal import echo

WAIT_POLL_SECONDS = 1.0
# `vmhealth probe` waits out the daemon's rate limit (429 + Retry-After) this long at most.
PROBE_RETRY_SECONDS = 5.0
STATUS_OUTPUTS = ["table", "wide", "json", "yaml"]
EVENT_OUTPUTS = ["table", "text", "json"]
MACHINE = ("json", "yaml")
# `status --watch` asks the daemon at most this often (each answer lists every domain).
MIN_WATCH_INTERVAL = 0.5
# Event times in the operator's local time; tests pin a zone (None: local).
TIME_ZONE: datetime.tzinfo | None = None
# The clock and the wait of `status`/`--watch`: tests replace both.
_now = time.time
_sleep = time.sleep
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$")


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


@click.command("daemon")
@click.option("--config", "config_path", envvar="VMHEALTH_CONFIG",
              default=DEFAULT_CONFIG_PATH, show_default=True,
              help="Configuration file (a missing file means all defaults).")
def daemon_command(config_path: str) -> None:
    """Run the host monitor daemon (systemd starts it as vmhealth.service)."""
    from vmhealth.monitor.config import ConfigError, load_config
    from vmhealth.monitor.logfmt import setup_logging

    try:
        from vmhealth.monitor.daemon import serve
    except ImportError as exc:  # vmhealth installed for a guest, without its host part
        raise Failure(f"{exc.name or 'a module'} is not installed; {HOST_PART}") from None

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
@click.option("-o", "--output", type=click.Choice(STATUS_OUTPUTS), default="table",
              show_default=True,
              help="table; wide: also each probe's last result and what explains the "
                   "state; json or yaml: the daemon's answer as it is.")
@click.option("-w", "--watch", is_flag=True,
              help="Keep asking; print again whenever something changed (Ctrl-C ends).")
@click.option("--interval", default="2s", show_default=True,
              help="With --watch: how often to ask the daemon.")
@socket_option
def status_command(domain: str | None, output: str, watch: bool, interval: str,
                   socket_path: str) -> None:
    """Health of every monitored domain, or of one (exit 1 unless live and ready).

    \b
    NAME STATE READY LIVE RESTARTS AGE LAST-EVENT, as `virsh list` and `kubectl get vmi`:
    STATE is libvirt's; AGE counts from the daemon's adoption of this run of the
    domain; RESTARTS and LAST-EVENT come from the daemon's recent events.
    """
    seconds = parse_duration(interval)
    if seconds < MIN_WATCH_INTERVAL:
        raise click.BadParameter(f"must be at least {MIN_WATCH_INTERVAL:g}s, got {interval!r}",
                                 param_hint="--interval")
    client = _client(socket_path)
    view = _call(_fetch_status, client, domain, output)
    if watch:
        view = _watch_status(client, domain, output, seconds, view)
    else:
        _print_status(view, output)
    if domain and not view.healthy:
        raise NotOk()


class StatusView:
    """One answer of the daemon: its /status (or /status/<domain>) and, for the tables,
    the events restarts and last events are read from."""

    def __init__(self, data: Any, domain: str | None, events: list[dict[str, Any]]) -> None:
        self.data = data
        self.entries: list[dict[str, Any]] = [data] if domain else data.get("domains") or []
        self.connected = True if domain else bool(data.get("libvirtConnected"))
        self.events = events
        self.healthy = bool(data.get("ready") and data.get("live")) if domain else True

    def table(self, output: str) -> Table:
        return status_table(self.entries, self.events, _now(), wide=output != "table")

    def key(self, output: str) -> Any:
        """What a watch compares: the table without what the clock alone changes (for
        json and yaml, the wide table's: a probe's every new result is not news)."""
        return self.connected, self.table("wide" if output in MACHINE else output).key()


def _fetch_status(client: ApiClient, domain: str | None, output: str) -> StatusView:
    data = client.status(domain)
    events: list[dict[str, Any]] = []
    if output not in MACHINE:
        name = data.get("name") if domain else None  # the name when asked by UUID
        events = list(client.events(domain=name))
    return StatusView(data, domain, events)


def _print_status(view: StatusView, output: str, *, again: bool = False) -> None:
    if output == "json":
        echo(json.dumps(view.data, indent=2))
        return
    if output == "yaml":
        echo(("---\n" if again else "") + yaml.safe_dump(view.data, sort_keys=False),
             nl=False)
        return
    if again:
        echo("")
    if not view.connected:
        echo("warning: the daemon is not connected to libvirt", err=True)
    if not view.entries:
        echo("no domain is monitored", err=True)
        return
    _print_lines(render(view.table(output), colour=_colour()))


def _watch_status(client: ApiClient, domain: str | None, output: str, interval: float,
                  view: StatusView) -> StatusView:
    """Print `view`, then ask again every `interval` and print again when the answer
    changed, until Ctrl-C; every request has the client's timeout. An unreachable
    daemon (restarting) or a domain not monitored for a while (a restart in progress)
    is said once on stderr and the watch goes on. Returns the last answer."""
    _print_status(view, output)
    shown, problem = view.key(output), None
    try:
        while True:
            _sleep(interval)
            try:
                latest = _fetch_status(client, domain, output)
            except (ApiUnavailable, ApiError) as exc:
                if str(exc) != problem:
                    echo(f"error: {exc}", err=True)
                problem, shown = str(exc), None
                view.healthy = False
                continue
            problem, view, key = None, latest, latest.key(output)
            if key != shown:
                _print_status(view, output, again=True)
                shown = key
    except KeyboardInterrupt:
        return view


def _print_lines(lines: list[str]) -> None:
    """Lines from status_table: every cell in them is escaped already, so they may be
    printed with their colours (echo would escape those too)."""
    for line in lines:
        click.echo(line)


def _colour() -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


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
@click.option("-o", "--output", type=click.Choice(EVENT_OUTPUTS), default="table",
              show_default=True,
              help="table: TIME DOMAIN TYPE MESSAGE with a header; text: the same "
                   "columns, no header, no colour; json: one event per line.")
@socket_option
def events_command(follow: bool, domain: str | None, output: str, socket_path: str) -> None:
    """Recent events (probe state changes, actions, watchdog, agent), oldest first."""
    client = _client(socket_path)
    try:
        events = client.events(follow=follow, domain=domain)
        if output == "json":
            for event in events:
                echo(json.dumps(event))
        elif follow or output == "text":
            _stream_events(events, header=output == "table")
        else:
            _print_lines(render(events_table(events, TIME_ZONE), colour=_colour()))
    except ApiUnavailable as exc:
        raise Failure(str(exc)) from None
    except KeyboardInterrupt:
        pass


def _stream_events(events: Iterable[dict[str, Any]], *, header: bool) -> None:
    """Each event as it comes, in columns of fixed width (rows not yet seen cannot be
    measured); a longer name or type pushes the rest of its line."""
    colour = header and _colour()
    if header:
        _print_lines(render(events_table([]), min_widths=FOLLOW_WIDTHS))
    for event in events:
        row = Table(EVENT_COLUMNS, [event_row(event, TIME_ZONE)])
        _print_lines(render(row, colour=colour, header=False, min_widths=FOLLOW_WIDTHS))


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
        raise NotOk()



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
