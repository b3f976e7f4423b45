"""The hook as a function: main(argv, stdin, stdout, stderr) -> exit code.

libvirt runs `/etc/libvirt/hooks/qemu.d/vmhealth <domain> <operation> <sub-op> <extra>`
with the domain XML on stdin (docs/hook.md has the table). What each operation does:

  prepare           refuse the start (exit 1, reason on stderr) when the vmhealth
                    metadata is invalid; libvirt shows stderr to the user
  started/reconnect hand the live XML to the daemon: <spool>/<uuid>.xml
  stopped/release   take it back (always exit 0: a stop must never fail)
  migrate/restore   print the XML with watchdog actions aligned to the spec, or
                    nothing when nothing changes
  anything else     nothing (newer libvirt versions add operations)

Rules that hold for every operation: a domain without our namespace costs one byte
search; libvirt is never called (it is waiting for us); no child process is started;
the run time is bounded; and only a definite verdict on the spec refuses anything.
Any other trouble (unreadable input, a full disk, a bug, the time limit) is reported
on stderr and the operation goes ahead, because vmhealth must never be the reason a
domain does not start or stop.
"""

from __future__ import annotations

import io
import sys

from vmhealth.hook import spool
from vmhealth.hook.scan import (
    MAX_XML_BYTES,
    NAMESPACE_BYTES,
    DomainFacts,
    ScanError,
    canonical_uuid,
    scan,
)

# libvirt has no timeout of its own for hooks; this one keeps a stuck hook (a hung
# /run, say) from holding a domain start forever. The normal run is milliseconds.
TIME_LIMIT_SECONDS = 10.0
EXIT_OK = 0
EXIT_REFUSED = 1
# stderr goes to libvirt's log: one line per changed watchdog up to this many, then a
# count (a definition may hold thousands of watchdogs).
MAX_REPORTED_CHANGES = 10


class HookTimeout(Exception):
    """Raised by the SIGALRM handler when the time limit is reached."""


class Invocation:
    """One run of the hook: its input and the streams to answer on."""

    def __init__(self, domain: str, operation: str, data: bytes, stdout, stderr,
                 spool_dir: str, config_dir: str | None) -> None:
        self.domain = domain
        self.operation = operation
        self.data = data
        self.stdout = stdout
        self.stderr = stderr
        self.spool_dir = spool_dir
        self.config_dir = config_dir  # libvirt's persistent definitions (None: default)

    @property
    def has_namespace(self) -> bool:
        # A plain byte search: the answer for nearly every domain on most hosts, and
        # it needs no parsing at all.
        return NAMESPACE_BYTES in self.data

    def health_facts(self) -> DomainFacts | None:
        """What scan() finds in a domain with vmhealth metadata; None for any other
        domain, decided by the byte search alone when possible. Raises ScanError."""
        if not self.has_namespace:
            return None
        facts = scan(self.data)
        return facts if facts.has_health else None

    def say(self, message: str) -> None:
        self.stderr.write(f"vmhealth: {message}\n")

    def shown_domain(self) -> str:
        name = self.domain
        if name.isprintable() and len(name) <= 200:
            return f"'{name}'"
        return "(a domain with an unprintable name)"


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------

def prepare(run: Invocation) -> int:
    try:
        facts = run.health_facts()
    except ScanError as exc:
        run.say(f"domain {run.shown_domain()} not started: its XML mentions vmhealth "
                f"but cannot be read: {exc}")
        return EXIT_REFUSED
    if facts is None:
        return EXIT_OK
    from vmhealth.hook import validate

    uuid = _uuid_or_none(facts)
    if uuid is not None and validate.is_known_valid(run.spool_dir, uuid, facts):
        return EXIT_OK
    try:
        validate.full_check(run.data, facts)
    except validate.InvalidSpec as exc:
        name = run.domain if run.domain.isprintable() else "DOMAIN"
        run.say(f"domain {run.shown_domain()} not started: its health spec is invalid: "
                f"{exc}. Fix it with `vmhealth apply {name} -f FILE` or remove it with "
                f"`vmhealth remove {name}`.")
        return EXIT_REFUSED
    if uuid is not None:
        try:
            validate.remember_valid(run.spool_dir, uuid, facts)
        except OSError as exc:
            run.say(f"note: could not cache the spec check ({exc}); the next start "
                    "checks again")
    return EXIT_OK


def hand_over(run: Invocation) -> int:
    """started, reconnect: the daemon monitors what is in the spool directory."""
    facts = run.health_facts()
    if facts is None:
        return EXIT_OK
    spool.write_atomic(run.spool_dir, canonical_uuid(facts), spool.XML_SUFFIX, run.data)
    return EXIT_OK


def take_back(run: Invocation) -> int:
    """stopped, release: no namespace check, so a domain whose metadata was removed
    while it ran does not leave its file behind."""
    uuid = canonical_uuid(scan(run.data))
    spool.remove(run.spool_dir, uuid, spool.RUNTIME_SUFFIXES)
    return EXIT_OK


def align_watchdog(run: Invocation) -> int:
    """migrate, restore: the XML on stdout, watchdog actions aligned with the spec."""
    facts = run.health_facts()
    if facts is None:
        return EXIT_OK
    from vmhealth.hook import persistent, validate
    from vmhealth.hook.watchdog import align

    uuid = canonical_uuid(facts)
    # The operator's current intent: the persistent definition's spec (changed by
    # `vmhealth apply` after a save, say); the incoming XML's when there is none.
    source = persistent.definition(uuid, persistent.config_dir(run.config_dir))
    try:
        spec = validate.full_check(*(source or (run.data, facts)))
    except validate.InvalidSpec as exc:
        run.say(f"{run.operation}: watchdog left as it is, the health spec is invalid: {exc}")
        return EXIT_OK
    if spec is None or spec["watchdog"] is None:
        return EXIT_OK
    model, action = spec["watchdog"]["model"], spec["watchdog"]["action"]
    result = align(run.data, facts, model, action)
    for change in result.changes[:MAX_REPORTED_CHANGES]:
        run.say(f"{run.operation}: {change}")
    if len(result.changes) > MAX_REPORTED_CHANGES:
        run.say(f"{run.operation}: and {len(result.changes) - MAX_REPORTED_CHANGES} more "
                f"watchdogs: action -> {action}")
    if result.missing_model is not None:
        # Said, not spooled: libvirt keeps the hook's stderr in its log, and no part of
        # vmhealth acts on it (the daemon reads the live XML when the domain starts).
        run.say(f"{run.operation}: the spec asks for a {model} watchdog (action {action}) "
                "that the running domain lacks; devices cannot change under a running "
                "guest, so it takes effect at the next cold boot (shut down, then start)")
    if result.xml is not None:
        _write(run.stdout, result.xml)
    return EXIT_OK


def _uuid_or_none(facts: DomainFacts) -> str | None:
    try:
        return canonical_uuid(facts)
    except ScanError:
        return None


OPERATIONS = {
    "prepare": prepare,
    "started": hand_over,
    "reconnect": hand_over,
    "stopped": take_back,
    "release": take_back,
    "migrate": align_watchdog,
    "restore": align_watchdog,
}


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def main(argv: list[str], stdin, stdout, stderr, *, spool_dir: str | None = None,
         config_dir: str | None = None,
         time_limit: float = TIME_LIMIT_SECONDS) -> int:
    """Run the hook. Streams may be text (io.StringIO in tests) or binary (libvirt).

    `spool_dir` overrides the spool directory and `config_dir` libvirt's directory of
    persistent definitions (both for tests); otherwise spool.spool_dir() and
    persistent.config_dir() (/etc/libvirt/qemu).
    """
    if len(argv) < 3:
        stderr.write("usage: vmhealth-hook DOMAIN OPERATION SUB-OPERATION EXTRA "
                     "(run by libvirt, domain XML on stdin)\n")
        return EXIT_OK
    operation = OPERATIONS.get(argv[2])
    if operation is None:
        return EXIT_OK
    disarm = _arm_timer(time_limit)
    try:
        run = Invocation(argv[1], argv[2], _read(stdin), stdout, stderr,
                         spool.spool_dir(spool_dir), config_dir)
        return operation(run)
    except HookTimeout:
        stderr.write(f"vmhealth: {argv[2]}: gave up after {time_limit:g} s; "
                     "libvirt goes ahead\n")
    except (ScanError, OSError) as exc:
        stderr.write(f"vmhealth: {argv[2]}: {exc}; libvirt goes ahead\n")
    except Exception as exc:  # noqa: BLE001 - a vmhealth bug must not stop a domain
        stderr.write(f"vmhealth: {argv[2]}: internal error {type(exc).__name__}: {exc}; "
                     "libvirt goes ahead (please report this)\n")
    finally:
        disarm()
    return EXIT_OK


def run() -> int:
    """What the installed executable calls."""
    return main(sys.argv, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)


def _read(stdin) -> bytes:
    # One byte over the limit is enough to know the document is too large.
    data = stdin.read(MAX_XML_BYTES + 1)
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return data


def _write(stdout, data: bytes) -> None:
    if isinstance(stdout, io.TextIOBase):
        stdout.write(data.decode("utf-8", "surrogateescape"))
    else:
        stdout.write(data)
    stdout.flush()


def _on_timeout(_signum, _frame) -> None:
    raise HookTimeout()


def _arm_timer(seconds: float):
    """Raise HookTimeout in this thread after `seconds`; return the disarm function."""
    try:
        # The C module: `signal` itself imports enum, a few ms we need not pay.
        import _signal as signals
    except ImportError:  # not CPython
        import signal as signals
    try:
        previous = signals.signal(signals.SIGALRM, _on_timeout)
    except ValueError:  # not the main thread (only in tests): no limit
        return lambda: None
    signals.setitimer(signals.ITIMER_REAL, seconds)

    def disarm() -> None:
        signals.setitimer(signals.ITIMER_REAL, 0)
        signals.signal(signals.SIGALRM, previous)

    return disarm
