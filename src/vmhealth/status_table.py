"""Tables for `vmhealth status` and `vmhealth events`: pure functions of the daemon's
JSON, the clock and the time zone, so that golden files can pin them down.

The columns follow what hypervisor operators read every day (`virsh list`,
`kubectl get vmi`, `kubectl get pods`): NAME STATE READY LIVE RESTARTS AGE LAST-EVENT,
ages as kubectl prints them (45s, 5m30s, 3d4h). The daemon's /status has no restart
count and no last event, so both come from its event buffer (`/events`); see
`restarts`.

Everything in a cell comes from the daemon, and much of it from a guest: each cell is
escaped for the terminal (vmhealth.excerpt.escape_for_terminal) before its width is
measured, so nothing printed can move the cursor or recolour the screen, and escapes
cannot break the alignment. Colour is added last, around cells already padded, and
only when the caller asks for it.
"""

from __future__ import annotations

import datetime
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import click

from vmhealth.excerpt import escape_for_terminal

SEPARATOR = "   "
NONE = "-"
# A cell of free text (a probe's reason, a result's message) is cut to this many
# columns in `-o wide`: the daemon bounds messages at 1000 characters, a table row
# should stay readable. `-o json` has them whole.
MESSAGE_WIDTH = 80
# `vmhealth events --follow` cannot measure rows it has not seen: fixed widths, as the
# text format has always had (the longest event type, LivenessActionFailed, is 20).
FOLLOW_WIDTHS = (19, 20, 20, 0)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

STATUS_COLUMNS = ("NAME", "STATE", "READY", "LIVE", "RESTARTS", "AGE", "LAST-EVENT")
WIDE_COLUMNS = ("STARTUP", "READINESS", "LIVENESS", "ENGINE", "MESSAGE")
EVENT_COLUMNS = ("TIME", "DOMAIN", "TYPE", "MESSAGE")
PROBE_KINDS = ("startup", "readiness", "liveness")  # the order the wide columns use

# Tones: how a cell is coloured on a terminal.
GOOD, WARN, BAD = "good", "warn", "bad"
COLOURS = {GOOD: "green", WARN: "yellow", BAD: "red"}
STATE_TONES = {"running": None, "crashed": BAD, "shut off": BAD}
EVENT_TONES = {
    **dict.fromkeys(("Ready", "Alive", "Started", "LibvirtReconnected", "AgentConnected"),
                    GOOD),
    **dict.fromkeys(("RestartBackOff", "LivenessAction", "ActionSkipped", "Released",
                     "AgentDisconnected", "EventsSuppressed"), WARN),
    **dict.fromkeys(("NotReady", "Unhealthy", "StartupFailed", "LivenessFailed",
                     "LivenessActionFailed", "Watchdog", "SpecInvalid",
                     "LibvirtDisconnected"), BAD),
}
# What counts as a restart of the guest: the daemon's liveness actions that restart
# it, and a watchdog that reset it (kubectl's RESTARTS counts every restart, whoever
# caused it). A poweroff is not one: the domain stays off.
RESTART_ACTIONS = {"LivenessAction": frozenset({"restart", "reset"}),
                   "Watchdog": frozenset({"reset"})}


class Cell(NamedTuple):
    """One cell: `text` escaped for the terminal, its colour, and `key`, what a watch
    compares to decide whether the table changed (the text without what the clock
    alone changes: "2 (5m ago)" has the key 2)."""

    text: str
    tone: str | None = None
    key: Any = None

    @property
    def stable(self) -> Any:
        return self.text if self.key is None else self.key


class Table(NamedTuple):
    header: tuple[str, ...]
    rows: list[tuple[Cell, ...]]

    def key(self) -> tuple[Any, ...]:
        """Equal for two tables that differ only in what time alone changed."""
        return tuple(tuple(cell.stable for cell in row) for row in self.rows)


# --------------------------------------------------------------------- text of cells
def cell(value: Any, tone: str | None = None, key: Any = None, *,
         limit: int | None = None) -> Cell:
    """A cell showing `value` (from the daemon: anything) escaped, on one line, and cut
    to `limit` columns when given."""
    text = NONE if value is None or value == "" else str(value)
    text = escape_for_terminal(text).replace("\t", "\\t")
    if limit is not None:
        text = cut(text, limit)
    return Cell(text, tone, key)


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide (CJK) characters two, combining marks none."""
    return sum(_char_width(ch) for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` columns, "..." at the end when it was cut."""
    if display_width(text) <= limit:
        return text
    kept, width = [], 3
    for ch in text:
        width += _char_width(ch)
        if width > limit:
            break
        kept.append(ch)
    return "".join(kept) + "..."


def human_duration(seconds: float) -> str:
    """A duration as kubectl shows ages: precise when short, coarse when long
    (45s, 5m30s, 42m, 5h30m, 23h, 3d4h, 45d, 2y30d)."""
    total = max(int(seconds), 0)
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 120:
        return f"{total}s"
    if minutes < 10:
        return _two_units(minutes, "m", total % 60, "s")
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return _two_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return _two_units(days, "d", hours % 24, "h")
    if days < 2 * 365:
        return f"{days}d"
    return _two_units(days // 365, "y", days % 365, "d")


def _two_units(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit}" + (f"{small}{small_unit}" if small else "")


def _timestamp(value: Any) -> float | None:
    """`value` if it is a time (seconds since the epoch), else None: the daemon's JSON
    is read, not trusted (another version, a bug) and a bad field shows as "-"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _ago(timestamp: Any, now: float) -> str | None:
    moment = _timestamp(timestamp)
    return None if moment is None else human_duration(now - moment)


def _yes_no(value: Any) -> Cell:
    if value is True:
        return Cell("yes", GOOD)
    if value is False:
        return Cell("no", BAD)
    return Cell("unknown", WARN)


def when(timestamp: Any, tz: datetime.tzinfo | None = None) -> str:
    """An event's time as the operator's clock shows it (`tz`, None: local time)."""
    seconds = _timestamp(timestamp)
    if seconds is None:
        return NONE
    try:
        moment = datetime.datetime.fromtimestamp(seconds, tz)
    except (OverflowError, OSError, ValueError):
        return NONE  # a time no calendar holds: another daemon's nonsense
    return moment.strftime(TIME_FORMAT)


# --------------------------------------------------------------------- events
def _fields(event: Mapping[str, Any]) -> Mapping[str, Any]:
    fields = event.get("fields")
    return fields if isinstance(fields, Mapping) else {}


def restarts(events: Iterable[Mapping[str, Any]]) -> tuple[int, float | None]:
    """How many restarts `events` (one domain's, oldest first) record, and when the
    last was. A lower bound: the daemon keeps its newest `event_buffer` events only,
    and none from before its own start."""
    count, last = 0, None
    for event in events:
        if _fields(event).get("action") in RESTART_ACTIONS.get(event.get("type"), ()):
            count += 1
            last = event.get("time")
    return count, last


def _by_domain(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        grouped.setdefault(event.get("domain"), []).append(event)
    return grouped


def _restarts_cell(events: Sequence[Mapping[str, Any]], now: float) -> Cell:
    count, last = restarts(events)
    ago = _ago(last, now) if count else None
    return Cell(f"{count} ({ago} ago)" if ago else str(count), WARN if count else None,
                count)


def _last_event_cell(events: Sequence[Mapping[str, Any]], now: float) -> Cell:
    if not events:
        return Cell(NONE)
    last = events[-1]
    kind = last.get("type") or "?"
    ago = _ago(last.get("time"), now)
    text = f"{kind} ({ago} ago)" if ago else kind
    return cell(text, EVENT_TONES.get(kind), (kind, last.get("seq")))


# --------------------------------------------------------------------- status
def status_table(domains: Sequence[Mapping[str, Any]],
                 events: Iterable[Mapping[str, Any]], now: float, *,
                 wide: bool = False) -> Table:
    """The table of `vmhealth status`: one row per entry of /status's `domains` (or
    the one entry of /status/<domain>), with restarts and the last event taken from
    `events` (/events, oldest first), ages counted to `now`."""
    grouped = _by_domain(events)
    header = STATUS_COLUMNS + (WIDE_COLUMNS if wide else ())
    rows = [_status_row(entry, grouped.get(entry.get("name"), []), now, wide)
            for entry in domains]
    return Table(header, rows)


def _status_row(entry: Mapping[str, Any], events: Sequence[Mapping[str, Any]],
                now: float, wide: bool) -> tuple[Cell, ...]:
    state = entry.get("state") or "unknown"
    adopted = entry.get("adoptedAt")
    row = (cell(entry.get("name")),
           cell(state, STATE_TONES.get(state, WARN)),
           _yes_no(entry.get("ready")),
           _yes_no(entry.get("live")),
           _restarts_cell(events, now),
           cell(_ago(adopted, now), key=adopted),
           _last_event_cell(events, now))
    if not wide:
        return row
    probes = entry.get("probes")
    probes = probes if isinstance(probes, Mapping) else {}
    return row + tuple(_probe_cell(probes.get(kind), now) for kind in PROBE_KINDS) \
        + (_engine_cell(probes), cell(message(entry, now), limit=MESSAGE_WIDTH,
                                      key=message(entry, None)))


def _engine_cell(probes: Mapping[str, Any]) -> Cell:
    """Which engine runs each probe now (the probe's `engine`: "native" while the native
    lane repeats it, else "python"): one word when they all agree, else per probe."""
    engines = [(kind, str(probe.get("engine") or ("native" if probe.get("nativeLane")
                                                   else "python")))
               for kind in PROBE_KINDS if isinstance(probe := probes.get(kind), Mapping)]
    if not engines:
        return Cell(NONE)
    if len({engine for _kind, engine in engines}) == 1:
        return cell(engines[0][1])
    return cell(", ".join(f"{kind} {engine}" for kind, engine in engines))


def _probe_cell(probe: Any, now: float) -> Cell:
    """A probe's last result: "success 3ms (4s ago)"; "-" when the domain has no such
    probe, "pending" before its first result."""
    if not isinstance(probe, Mapping):
        return Cell(NONE)
    last = probe.get("lastResult")
    if not isinstance(last, Mapping):
        return Cell("pending", WARN)
    outcome = last.get("outcome")
    counted = last.get("counted") is not False
    text = str(outcome) + ("" if counted else " uncounted")
    duration = last.get("duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        text += f" {duration * 1000:.0f}ms"
    ago = _ago(last.get("time"), now)
    if ago:
        text += f" ({ago} ago)"
    tone = GOOD if outcome == "success" else WARN if outcome == "skipped" or not counted \
        else BAD
    return cell(text, tone, (outcome, counted))


def message(entry: Mapping[str, Any], now: float | None) -> str:
    """What most explains the domain's state, in one line: a liveness action in flight
    (with the end of its back-off), then the daemon's `notReadyReason`, then why
    failures are not counted (a migration leaves the domain ready), then the first
    probe not healthy (startup, liveness, readiness: a daemon without
    `notReadyReason`, or a liveness still unknown). `now` None leaves out what the
    clock alone changes (a watch compares that)."""
    action = entry.get("action")
    if isinstance(action, Mapping):
        text = f"{action.get('action')}: {action.get('phase')}"
        resume = _timestamp(action.get("resumeAt"))
        if now is not None and resume is not None and resume > now:
            text += f", starts again in {human_duration(resume - now)}"
        return text
    if entry.get("notReadyReason"):
        return str(entry["notReadyReason"])
    if entry.get("suppressed"):
        return f"failures not counted: domain is {entry['suppressed']}"
    probes = entry.get("probes")
    probes = probes if isinstance(probes, Mapping) else {}
    for kind in ("startup", "liveness", "readiness"):
        probe = probes.get(kind)
        if isinstance(probe, Mapping) and probe.get("healthy") is not True:
            return f"{kind}: {probe.get('reason') or 'no result yet'}"
    return ""


# --------------------------------------------------------------------- events table
def event_row(event: Mapping[str, Any], tz: datetime.tzinfo | None = None
              ) -> tuple[Cell, ...]:
    kind = event.get("type")
    return (Cell(when(event.get("time"), tz)), cell(event.get("domain")),
            cell(kind, EVENT_TONES.get(kind)), cell(event.get("message")))


def events_table(events: Iterable[Mapping[str, Any]],
                 tz: datetime.tzinfo | None = None) -> Table:
    """The table of `vmhealth events`, oldest first; the daemon's own events (no
    domain) show "-". Messages are never cut: the daemon bounds them."""
    return Table(EVENT_COLUMNS, [event_row(event, tz) for event in events])


# --------------------------------------------------------------------- rendering
def render(table: Table, *, colour: bool = False, header: bool = True,
           min_widths: Sequence[int] = ()) -> list[str]:
    """The table's lines: columns padded to their widest cell (at least `min_widths`),
    the last column not padded. With `colour`, cells are wrapped in ANSI colours after
    padding, so colour never shifts a column."""
    lines = [tuple(Cell(title) for title in table.header)] if header else []
    lines += table.rows
    widths = [max([display_width(row[i].text) for row in lines] + [0]) for i in
              range(len(table.header))]
    widths = [max(width, minimum) for width, minimum in
              zip(widths, list(min_widths) + [0] * len(widths))]
    return [_line(row, widths, colour) for row in lines]


def _line(row: Sequence[Cell], widths: Sequence[int], colour: bool) -> str:
    parts = []
    for i, item in enumerate(row):
        last = i == len(row) - 1
        padded = item.text if last else item.text + " " * (widths[i] - display_width(
            item.text))
        if colour and item.tone in COLOURS:
            # style the text only, then pad: the colour reset comes before the spaces
            padded = click.style(item.text, fg=COLOURS[item.tone]) + padded[len(item.text):]
        parts.append(padded)
    return SEPARATOR.join(parts).rstrip()
