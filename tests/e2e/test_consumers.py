"""The read-only web listener's real consumers in the sandbox: a Prometheus server that
scrapes it and evaluates the shipped alert rules, and an HAProxy that balances two
guests by vmhealth's readiness (docs/prometheus.md, docs/load-balancers.md).

Both speak to the listener as in production: TLS with a test certificate and basic
authentication from a web.config.yml. Both guests serve HTTP (what HAProxy balances;
their liveness probe) and a TCP port (their readiness probe): killing the TCP server
makes a guest NotReady while it stays live.
"""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import re
import shutil
import ssl
import subprocess
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import bcrypt
import pytest
import yaml

from tests.ci import missing
from tests.unit.tls_files import self_signed
from tools.sandbox.daemon import BOOT_TIMEOUT, DaemonProcess, define_with_spec, wait_status
from tools.sandbox.waiting import GiveUp, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "host" / "prometheus" / "vmhealth-alerts.yml"
LB_DOC = REPO / "docs" / "load-balancers.md"

WEB_PORT = 9477  # the listener's port in docs/load-balancers.md's example, kept
HTTP_PORT = 1500
TCP_PORT = 1501
PROMETHEUS_PORT = 9090
LB_PORT = 80  # `bind :80` of the example, kept (the sandbox has a network of its own)
STATS_PORT = 18081
NAMES = ("app1", "app2")  # the server names of the example are the domains' names
USER, PASSWORD = "scraper", "e2e-not-a-secret"
ALERT_FOR = "3s"  # every rule's `for:` in the test's copy of the rules
REQUESTS = 40

FAST = {"periodSeconds": 1, "timeoutSeconds": 1}
SPEC = {
    "startupProbe": {"guestAgentPing": {}, **FAST, "failureThreshold": BOOT_TIMEOUT},
    "readinessProbe": {"tcpSocket": {"port": TCP_PORT}, **FAST, "failureThreshold": 1},
    "livenessProbe": {"httpGet": {"port": HTTP_PORT, "path": "/"}, **FAST,
                      "failureThreshold": 3},
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not installed (scripts/debian-packages.txt; scripts/install-deps)")
    return path


@pytest.fixture(scope="module")
def workdir(sandbox) -> Path:
    path = sandbox.log_dir / "consumers"  # kept with the run's other logs
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def tls(workdir) -> tuple[Path, Path]:
    return self_signed(workdir, "listener")


@pytest.fixture(scope="module")
def daemon(workdir, sandbox, tls):
    cert, key = tls
    web_config = workdir / "web.config.yml"
    web_config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
        "basic_auth_users": {
            USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()},
    }))
    (workdir / "daemon").mkdir(exist_ok=True)
    proc = DaemonProcess(workdir / "daemon", sandbox.uri, tcp_listen=f"127.0.0.1:{WEB_PORT}",
                         web_config_file=web_config)
    proc.start()
    yield proc
    proc.stop()  # its log: consumers/daemon/ in the run's log directory


@pytest.fixture(scope="module")
def guests(guest_factory, daemon):
    made = {name: guest_factory.create(name, start=False, http_port=HTTP_PORT,
                                       tcp_port=TCP_PORT) for name in NAMES}
    for guest in made.values():
        define_with_spec(guest, SPEC)
        guest.start()
    for name, guest in made.items():
        wait_status(daemon, name, "ready", lambda e: e["ready"])
        # Each guest serves its own name: what a response through HAProxy came from.
        result = guest.exec("sh", "-c", 'echo "$1" > /srv/www/who', "sh", name)
        assert result.exitcode == 0, result.stderr
    yield made
    for guest in made.values():  # two TCG guests fewer for the modules after this one
        if guest.dom.isActive():
            guest.dom.destroy()


def _restart_tcp_server(guest) -> None:
    """Start the readiness port's server in the guest again (as guest_init.sh did)."""
    result = guest.exec("sh", "-c", 'nc -ll -p "$1" -e cat </dev/null >/dev/null 2>&1 & '
                        'echo $! > /run/vmh/tcp.pid', "sh", str(TCP_PORT))
    assert result.exitcode == 0, result.stderr


class Server:
    """A real server (prometheus, haproxy) as a subprocess, its output in a log file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=out,  # noqa: S603
                                            stdin=subprocess.DEVNULL)

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise GiveUp(f"{self.process.args[0]} exited {self.process.returncode}; "
                         f"log: {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- Prometheus ------------------------------------------------------------------------

def short_rules(source: Path, destination: Path) -> None:
    """The shipped rules with every `for:` cut to ALERT_FOR (parsed, not edited)."""
    rules = yaml.safe_load(source.read_text())
    changed = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = ALERT_FOR
                changed += 1
    assert changed, f"no rule in {source} has a `for:`"
    destination.write_text(yaml.safe_dump(rules, sort_keys=False))


class Prometheus(Server):
    def __init__(self, workdir: Path, ca_file: Path) -> None:
        rules = workdir / "vmhealth-alerts.yml"
        short_rules(RULES, rules)
        password = workdir / "scrape-password"
        password.write_text(PASSWORD)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "vmhealth",  # the job the shipped rules expect
                "scheme": "https",
                "tls_config": {"ca_file": str(ca_file)},
                "basic_auth": {"username": USER, "password_file": str(password)},
                "static_configs": [{"targets": [f"127.0.0.1:{WEB_PORT}"]}],
            }],
        }))
        data = workdir / "prometheus-data"
        shutil.rmtree(data, ignore_errors=True)
        super().__init__([_tool("prometheus"), f"--config.file={config}",
                          f"--storage.tsdb.path={data}",
                          f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
                         workdir / "prometheus.log")
        wait_until(self._ready, timeout=60, what="prometheus to be ready")

    def _ready(self) -> bool:
        self.alive()
        return _get(PROMETHEUS_PORT, "/-/ready")[0] == 200

    def api(self, path: str, **query: str) -> object:
        self.alive()
        status, body = _get(PROMETHEUS_PORT, f"/api/v1/{path}?{urllib.parse.urlencode(query)}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return answer["data"]

    def value(self, expr: str) -> float | None:
        """The value of an instant query with one series (None: no series)."""
        result = self.api("query", query=expr)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str, domain: str) -> list[dict]:
        return [alert for alert in self.api("alerts")["alerts"]
                if alert["labels"].get("alertname") == name
                and alert["labels"].get("domain") == domain]


@pytest.fixture(scope="module")
def prometheus(workdir, tls, daemon):
    server = Prometheus(workdir, tls[0])
    yield server
    server.stop()


def test_promtool_accepts_the_running_daemons_metrics_page(guests, tls):
    context = ssl.create_default_context(cafile=str(tls[0]))
    conn = http.client.HTTPSConnection("127.0.0.1", WEB_PORT, timeout=10, context=context)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        page = response.read()
    finally:
        conn.close()
    assert response.status == 200, page[:200]
    assert all(f'domain="{name}"'.encode() in page for name in NAMES)
    checked = subprocess.run([_tool("promtool"), "check", "metrics"], input=page,
                             capture_output=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_the_listener_and_fires_the_not_ready_alert(guests, prometheus):
    domain = "app1"
    healthy = f'vmhealth_probe_healthy{{domain="{domain}",probe="readiness"}}'
    # TLS and basic authentication from the web.config.yml: the scrape succeeds.
    wait_until(lambda: prometheus.value('up{job="vmhealth"}') == 1.0, timeout=30,
               what="prometheus to scrape the listener (up == 1)")
    wait_until(lambda: prometheus.value(healthy) == 1.0, timeout=30,
               what=f"{healthy} == 1 in prometheus")
    # The boot (not ready yet) may have fired the alert; it resolves once ready.
    wait_until(lambda: not prometheus.alerts("VmhealthDomainNotReady", domain), timeout=30,
               what=f"no VmhealthDomainNotReady alert for {domain} while it is ready")

    guests[domain].kill_service("tcp", "KILL")
    killed = time.monotonic()
    wait_until(lambda: prometheus.value(healthy) == 0.0, timeout=30,
               what=f"{healthy} == 0 in prometheus after the kill")
    flipped = time.monotonic() - killed
    firing = wait_until(
        lambda: [a for a in prometheus.alerts("VmhealthDomainNotReady", domain)
                 if a["state"] == "firing"],
        timeout=60, what=f"VmhealthDomainNotReady firing for {domain}")
    fired = time.monotonic() - killed
    print(f"prometheus: {healthy} 0 after {flipped:.1f}s, alert firing after {fired:.1f}s "
          f"(for: {ALERT_FOR})")
    labels = firing[0]["labels"]
    assert labels["severity"] == "warning" and labels["instance"] == f"127.0.0.1:{WEB_PORT}"
    assert domain in firing[0]["annotations"]["summary"]
    assert not prometheus.alerts("VmhealthDomainNotReady", "app2")

    _restart_tcp_server(guests[domain])
    wait_until(lambda: prometheus.value(healthy) == 1.0, timeout=30,
               what=f"{healthy} back to 1 after the TCP server is started again")
    wait_until(lambda: not prometheus.alerts("VmhealthDomainNotReady", domain), timeout=30,
               what=f"the alert for {domain} to resolve")


# --- HAProxy ---------------------------------------------------------------------------

def haproxy_config(doc: Path, guests: dict, ca_file: Path) -> str:
    """docs/load-balancers.md's example with the sandbox's addresses, CA file and
    credentials, and a stats page for the test to read the servers' states."""
    blocks = re.findall(r"^```haproxy\n(.*?)^```", doc.read_text(), re.S | re.M)
    assert len(blocks) == 1, f"{doc}: expected one ```haproxy block, found {len(blocks)}"
    text = blocks[0]
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for example, actual in (
            ("192.0.2.11:8080", f"{guests['app1'].spec.ipv4}:{HTTP_PORT}"),
            ("192.0.2.12:8080", f"{guests['app2'].spec.ipv4}:{HTTP_PORT}"),
            ("addr 198.51.100.1", "addr 127.0.0.1"),
            ("addr 198.51.100.2", "addr 127.0.0.1"),
            ("/etc/haproxy/vmhealth-ca.crt", str(ca_file)),
            ("aGFwcm94eTpjaGFuZ2UtbWU=", token)):
        assert text.count(example) == 1, f"{doc}: {example!r} not once in the example"
        text = text.replace(example, actual)
    return (f"{text}\nfrontend stats\n    bind 127.0.0.1:{STATS_PORT}\n"
            "    stats enable\n    stats uri /stats\n")


class HAProxy(Server):
    def __init__(self, workdir: Path, guests: dict, ca_file: Path) -> None:
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(LB_DOC, guests, ca_file))
        binary = _tool("haproxy")
        checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True,
                                 text=True, timeout=30, check=False)
        assert checked.returncode == 0, f"haproxy -c: {checked.stdout}{checked.stderr}"
        super().__init__([binary, "-db", "-f", str(config)], workdir / "haproxy.log")

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's status (UP, DOWN, ...) in the example's backend."""
        self.alive()
        status, body = _get(STATS_PORT, "/stats;csv")
        assert status == 200, body
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "app_vms"
                and row["svname"] in NAMES}

    def wait_for(self, name: str, state: str, timeout: float = 30) -> float:
        """Wait until HAProxy shows the server in `state` (UP, DOWN); return seconds."""
        start = time.monotonic()
        wait_until(lambda: self.states().get(name, "").startswith(state), timeout=timeout,
                   what=f"haproxy to mark {name} {state}", interval=0.1)
        return time.monotonic() - start

    def count(self, requests: int = REQUESTS) -> Counter:
        """Send requests through HAProxy; count them by the guest that answered."""
        served: Counter = Counter()
        for _ in range(requests):
            self.alive()
            status, body = _get(LB_PORT, "/who")
            served[body.decode(errors="replace").strip() if status == 200 else status] += 1
        return served


@pytest.fixture(scope="module")
def haproxy(workdir, tls, guests):
    server = HAProxy(workdir, guests, tls[0])
    yield server
    server.stop()


def test_haproxy_sends_traffic_only_to_ready_guests(daemon, guests, haproxy):
    for name in NAMES:
        haproxy.wait_for(name, "UP")
    before = haproxy.count()
    assert set(before) == set(NAMES) and sum(before.values()) == REQUESTS, before

    guests["app2"].kill_service("tcp", "KILL")
    killed = time.monotonic()
    wait_status(daemon, "app2", "not ready", lambda e: not e["ready"], timeout=30)
    not_ready = time.monotonic() - killed
    down = haproxy.wait_for("app2", "DOWN")
    during = haproxy.count()
    print(f"haproxy: app2 not ready {not_ready:.1f}s after the kill, DOWN in haproxy "
          f"{down:.1f}s later; {REQUESTS} requests: {dict(during)} (before: {dict(before)})")
    assert during == Counter({"app1": REQUESTS}), during
    # Readiness took it out, not death: live, and it answers when asked directly.
    assert daemon.status("app2")["live"]
    assert _get(HTTP_PORT, "/who", host=guests["app2"].spec.ipv4) == (200, b"app2\n")

    _restart_tcp_server(guests["app2"])
    wait_status(daemon, "app2", "ready again", lambda e: e["ready"], timeout=30)
    haproxy.wait_for("app2", "UP")
    after = haproxy.count()
    print(f"haproxy: app2 ready again; {REQUESTS} requests: {dict(after)}")
    assert set(after) == set(NAMES) and sum(after.values()) == REQUESTS, after
