"""What the vmhealth hook adds to a real `virsh start`, against no hook at all.

    .venv/bin/python benchmarks/bench_hook_start.py [--runs 5]

Runs in the e2e sandbox (a private libvirtd and real TCG guests; see docs/e2e.md): it
re-executes itself inside the sandbox's namespaces, installs the hook with `vmhealth
hook install` and defines two guests: one without vmhealth metadata and one with a spec
(`vmhealth apply`: a guestAgentPing liveness probe and an i6300esb watchdog). Each guest
is started with `virsh start` and destroyed at once (a start runs the hooks prepare,
start and started), --runs times under each of three variants, alternating run by run
so load from anything else on the machine hits all of them alike:

- no hook (the baseline): the hook's executable bit cleared. libvirt lists qemu.d on
  every call and skips files it cannot execute, so no reload is involved;
- vmhealth hook: the hook as installed;
- /bin/sh no-op hook: only a shell script that exits 0, what libvirt's running of any
  hook costs (fork, exec, pipes): the scale of the noise.

Printed per guest: the median start without hooks, then each variant's median, its
difference and its ratio to that baseline. No target (the hook's own time is
benchmarks/bench_hook.py's); docs/hook.md quotes these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.sandbox import events, guest_image, namespace, paths  # noqa: E402
from tools.sandbox.guests import Guest, GuestFactory  # noqa: E402
from tools.sandbox.sandbox import HOOK_DIR, Sandbox  # noqa: E402

HOOK = HOOK_DIR / "vmhealth"
NOOP = HOOK_DIR / "zz-noop"
# variant: (the vmhealth hook's mode, the no-op hook's mode); the baseline first
VARIANTS = {"no hook": (0o644, 0o644), "vmhealth hook": (0o755, 0o644),
            "/bin/sh no-op hook": (0o644, 0o755)}
SPEC = {"livenessProbe": {"guestAgentPing": {}, "periodSeconds": 10},
        "watchdog": {"model": "i6300esb", "action": "reset"}}


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({' '.join(argv)}):\n{done.stdout}{done.stderr}")
    return done


def _vmhealth(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("vmhealth")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "vmhealth.cli"]
    return _run([*argv, *args], f"vmhealth {args[0]}")


def _start_seconds(uri: str, name: str) -> float:
    start = time.perf_counter()
    _run(["virsh", "-c", uri, "start", name], f"virsh start {name}")
    seconds = time.perf_counter() - start
    _run(["virsh", "-c", uri, "destroy", name], f"virsh destroy {name}")
    return seconds


def _apply_spec(uri: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "spec.json"
        path.write_text(json.dumps(SPEC))
        _vmhealth("--connect", uri, "apply", name, "-f", str(path))


def measure(uri: str, guests: list[Guest], runs: int) -> dict[tuple[str, str], list[float]]:
    """Start seconds per (guest, variant), the variants alternating run by run."""
    NOOP.write_text("#!/bin/sh\nexit 0\n")
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(runs):
            for variant, (hook_mode, noop_mode) in VARIANTS.items():
                HOOK.chmod(hook_mode)
                NOOP.chmod(noop_mode)
                for guest in guests:
                    times.setdefault((guest.name, variant), []).append(
                        _start_seconds(uri, guest.name))
    finally:
        HOOK.chmod(0o755)
        NOOP.unlink()
    return times


def report(guests: list[Guest], times: dict[tuple[str, str], list[float]], runs: int) -> None:
    print(f"virsh start + destroy, {runs} alternating runs of each variant; "
          "load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for guest in guests:
        base = statistics.median(times[(guest.name, "no hook")])
        print(f"{guest.name}: median start {base * 1000:.0f} ms without hooks (the baseline)")
        for variant in VARIANTS:
            if variant == "no hook":
                continue
            ordered = sorted(times[(guest.name, variant)])
            median = statistics.median(ordered)
            print(f"  {variant:20} median {median * 1000:5.0f} ms, "
                  f"{(median - base) * 1000:+4.0f} ms, {median / base:.2f}x the baseline "
                  f"(range {ordered[0] * 1000:.0f}-{ordered[-1] * 1000:.0f} ms)")


def run(runs: int) -> int:
    box = Sandbox(paths.new_log_dir("bench-hook-start"))
    factory = None
    try:
        box.start()
        factory = GuestFactory(box, events.connect(box.uri), guest_image.build())
        installed = _vmhealth("hook", "install")
        if "sent SIGHUP to libvirtd" not in installed.stdout:
            raise SystemExit(f"vmhealth hook install did not reload libvirtd:\n"
                             f"{installed.stdout}")
        guests = [factory.create("hook-time-plain", start=False),
                  factory.create("hook-time-spec", start=False)]
        _apply_spec(box.uri, guests[1].name)
        report(guests, measure(box.uri, guests, runs), runs)
        return 0
    finally:
        if factory is not None:
            factory.cleanup()
        box.stop()
        changed = box.host_changes()  # the hook went into the sandbox's /etc/libvirt only
        if changed:
            print(f"the sandbox changed host files: {changed}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--inside":  # pid 1 of the namespace: run the child, reap
        return namespace.run_as_init([sys.executable, "-m", "benchmarks.bench_hook_start",
                                      "--child", *argv[1:]], cwd=str(REPO))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5,
                        help="starts of each guest under each variant")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.child:
        os.chdir(REPO)
        namespace.reexec("benchmarks.bench_hook_start", argv)
    return run(args.runs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
