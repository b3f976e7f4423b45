"""What one `vmhealth check DOMAIN --liveness` costs a cluster monitor (docs/cluster.md).

    .venv/bin/python benchmarks/bench_check.py [--runs N]

Pacemaker runs the check at every monitor interval for every resource, so its cost
is paid all the time. The case: `vmhealth check web1 --liveness` against a status
server on a unix socket (the daemon's GET /status/<domain> answer, served by
http.server in this process). Baselines, interleaved with it in the same loop so
machine load affects them alike: `vmhealth --version` (the CLI's own start: what any
vmhealth command costs) and `PY -I -S -c pass` (a bare interpreter). Also measured:
`PY -I -m vmhealth.cli_check web1 --liveness`, the same command without the other
commands' imports. Printed: wall
time medians and ranges, CPU time per run (user + system, from the children's
rusage), and the ratios. Target: the check costs at most 1.2x `vmhealth --version`
(the request and the answer add little to the CLI's start).
"""

from __future__ import annotations

import argparse
import json
import resource
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

RATIO_TARGET = 1.2
STATUS = {"name": "web1", "uuid": "u-1", "state": "running", "suppressed": None,
          "ready": True, "live": True,
          "probes": {"liveness": {"healthy": True, "reason": "alive: HTTP probe succeeded",
                                  "since": 1.0}}}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(STATUS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    vmhealth = str(Path(sys.executable).with_name("vmhealth"))
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = str(Path(tmp) / "api.sock")
        server = _Server(socket_path, _Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        cases = {
            "check": [vmhealth, "check", "web1", "--liveness", "--socket", socket_path],
            "python -m cli_check": [sys.executable, "-I", "-m", "vmhealth.cli_check", "web1",
                                    "--liveness", "--socket", socket_path],
            "vmhealth --version": [vmhealth, "--version"],
            "python -I -S -c pass": [sys.executable, "-I", "-S", "-c", "pass"],
        }
        walls: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, float] = dict.fromkeys(cases, 0.0)
        for _ in range(args.runs):
            for name, argv in cases.items():
                cpu, start = _cpu(), time.perf_counter()
                result = subprocess.run(argv, capture_output=True, check=False)
                walls[name].append(time.perf_counter() - start)
                cpus[name] += _cpu() - cpu
                if result.returncode != 0:
                    print(f"{name} exited {result.returncode}: {result.stderr!r}")
                    return 1
        server.shutdown()
        server.server_close()
    medians = {name: statistics.median(times) for name, times in walls.items()}
    for name, times in walls.items():
        print(f"{name:22} median {medians[name] * 1000:6.1f} ms (range "
              f"{min(times) * 1000:.1f}-{max(times) * 1000:.1f}), CPU "
              f"{cpus[name] / args.runs * 1000:.1f} ms per run")
    ratio = medians["check"] / medians["vmhealth --version"]
    print(f"check / vmhealth --version: {ratio:.2f}x (target <= {RATIO_TARGET}x: "
          f"{'met' if ratio <= RATIO_TARGET else 'MISSED'}); check / bare interpreter: "
          f"{medians['check'] / medians['python -I -S -c pass']:.1f}x; python -m "
          f"vmhealth.cli_check / check: {medians['python -m cli_check'] / medians['check']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
