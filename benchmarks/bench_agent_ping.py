"""Host CPU per guest-agent ping: the daemon's path vs one `virsh` process per ping.

    .venv/bin/python benchmarks/bench_agent_ping.py [--pings 200]

Runs in the e2e sandbox (a private libvirtd and a real TCG guest with qemu-ga; see
docs/e2e.md): it re-executes itself inside the sandbox's namespaces, boots one guest,
then measures in the same run, interleaved in rounds so machine load affects both:

- daemon: `guest-ping` through libvirt_qemu.qemuAgentCommand on one kept-open
  connection (what vmhealth's GuestAccess does, from a thread pool);
- virsh: `virsh qemu-agent-command DOMAIN '{"execute":"guest-ping"}'`, one process
  per ping (what a cron or monitor script does).

Host CPU = CPU time of the caller (this process, or the virsh children) + libvirtd +
the guest's QEMU process, from /proc (user + system). Target (issue 4): the daemon's
path at least 20x cheaper per ping.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.harness import agent, events, guest_image, namespace, paths  # noqa: E402
from tests.e2e.harness.guests import GuestFactory  # noqa: E402
from tests.e2e.harness.sandbox import Sandbox  # noqa: E402

TARGET_RATIO = 20.0
ROUNDS = 4
PING = json.dumps({"execute": "guest-ping"})


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(servers: list[psutil.Process]) -> float:
    return sum(_cpu(p) for p in servers)


def measure_daemon_path(dom, servers, pings: int) -> tuple[float, float, float]:
    """(caller CPU, libvirtd + QEMU CPU, wall) for `pings` pings."""
    import libvirt_qemu

    cpu0, srv0, t0 = _self_cpu(), _server_cpu(servers), time.monotonic()
    for _ in range(pings):
        libvirt_qemu.qemuAgentCommand(dom, PING, 5, 0)
    return _self_cpu() - cpu0, _server_cpu(servers) - srv0, time.monotonic() - t0


def measure_virsh(uri: str, name: str, servers, pings: int) -> tuple[float, float, float]:
    cpu0, srv0, t0 = _children_cpu(), _server_cpu(servers), time.monotonic()
    for _ in range(pings):
        subprocess.run(["virsh", "-c", uri, "qemu-agent-command", name, PING],
                       check=True, capture_output=True, timeout=30)
    return _children_cpu() - cpu0, _server_cpu(servers) - srv0, time.monotonic() - t0


def _process_of(pidfile: str) -> psutil.Process:
    return psutil.Process(int(Path(pidfile).read_text().strip()))


def run(pings: int) -> int:
    box = Sandbox(paths.new_log_dir("bench-agent-ping"))
    try:
        box.start()
        conn = events.connect(box.uri)
        factory = GuestFactory(box, conn, guest_image.build())
        guest = factory.create("bench-ping")
        print(f"guest-ping answered {guest.wait_for_agent(timeout=180):.1f}s after start")
        servers = [_process_of("/run/libvirt/libvirtd.pid"),
                   _process_of(f"/run/libvirt/qemu/{guest.name}.pid")]
        agent.ping(guest.dom)  # warm both paths up once
        subprocess.run(["virsh", "-c", box.uri, "qemu-agent-command", guest.name, PING],
                       check=True, capture_output=True, timeout=30)
        per_round = max(1, pings // ROUNDS)
        totals = {"daemon": [0.0, 0.0, 0.0], "virsh": [0.0, 0.0, 0.0]}
        for _ in range(ROUNDS):
            for key, figures in (
                    ("daemon", measure_daemon_path(guest.dom, servers, per_round)),
                    ("virsh", measure_virsh(box.uri, guest.name, servers, per_round))):
                totals[key] = [a + b for a, b in zip(totals[key], figures)]
        total = per_round * ROUNDS
        per_ping = {key: [v / total * 1000 for v in values] for key, values in totals.items()}
        host = {key: caller + servers_ms for key, (caller, servers_ms, _wall)
                in per_ping.items()}
        ratio = host["virsh"] / host["daemon"] if host["daemon"] > 0 else float("inf")
        print(f"pings per path: {total} ({ROUNDS} interleaved rounds)")
        for key, label in (("daemon", "daemon path (qemuAgentCommand, kept-open connection)"),
                           ("virsh", "one virsh qemu-agent-command per ping")):
            caller, servers_ms, wall = per_ping[key]
            print(f"{label}: {host[key]:.3f} ms host CPU per ping (caller {caller:.3f}, "
                  f"libvirtd + QEMU {servers_ms:.3f}), {wall:.2f} ms wall")
        caller_ratio = per_ping["virsh"][0] / max(per_ping["daemon"][0], 1e-9)
        print(f"caller CPU alone: virsh/daemon {caller_ratio:.1f}x")
        verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
        print(f"ratio virsh/daemon: {ratio:.1f}x ({verdict} the {TARGET_RATIO:.0f}x target)")
        factory.cleanup()
        return 0 if ratio >= TARGET_RATIO else 1
    finally:
        box.stop()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--inside":  # pid 1 of the namespace: run the child, reap
        return namespace.run_as_init([sys.executable, "-m", "benchmarks.bench_agent_ping",
                                      "--child", *argv[1:]], cwd=str(REPO))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pings", type=int, default=200)
    args = parser.parse_args(argv)
    if not args.child:
        os.chdir(REPO)
        namespace.reexec("benchmarks.bench_agent_ping", argv)
    return run(args.pings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
