"""vmhealth as the health signal of a real Pacemaker/Corosync cluster (docs/cluster.md).

Two cluster nodes (harness/cluster.py: Corosync and Pacemaker, each node in network,
mount, UTS and pid namespaces of its own), each with a libvirtd of its own (node1 the
sandbox's, node2 the peer host's, harness/peer.py) and a vmhealth daemon of its own.
One VirtualDomain resource runs a test guest whose spec says onLivenessFailure:
report, with `vmhealth check --liveness` as its monitor_scripts. Fencing is DISABLED
here (stonith-enabled=false), in this test only: there is no fence device in the
sandbox. A production cluster must fence (docs/cluster.md); where a fence agent
would power the lost node off, the test destroys that node's domain itself.

What must hold:
- readiness fails while liveness holds: Pacemaker does nothing;
- the vmhealth daemon is stopped for 30 s: Pacemaker does nothing;
- the guest's service dies (liveness fails): Pacemaker restarts the resource on the
  same node, and after migration-threshold (2) failures relocates it to the other;
- a node's cluster stack is killed: the resource is started on the other node, whose
  vmhealth daemon adopts it and probes it;
- the lost node comes back and the resource is moved to it (crm_resource --move,
  allow-migrate=true): Pacemaker live-migrates it (migrate_to and migrate_from, no
  stop and start: the guest's boot id stays the same), the target's vmhealth daemon
  adopts it and finds it live and ready, and no monitor fails and nothing is
  restarted on either node.
The tests run in this order and share the cluster (module fixtures); each says what
it expects to find. Times (failure -> recovery) are printed for docs/cluster.md.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.ci import missing, require_tool
from tests.e2e.harness import cluster as pcmk
from tests.e2e.harness.peer import PEER_DIR, PeerHost
from tests.e2e.harness.peer import SOCKET as PEER_SOCKET
from tools.sandbox.daemon import BOOT_TIMEOUT, DaemonProcess, define_with_spec, vmhealth_cli
from tools.sandbox.guests import Guest
from tools.sandbox.sandbox import SOCKET as SANDBOX_SOCKET
from tools.sandbox.waiting import wait_until
from vmhealth.monitor.client import ApiError

pytestmark = pytest.mark.e2e

NAME = "cl-web"
RSC = "vm"
HTTP_PORT = 1700
FAST = {"periodSeconds": 1, "timeoutSeconds": 1}


def _spec() -> dict:
    """The guest's health spec. The HTTP liveness probe finds the guest's address
    itself (through the agent, as an operator's spec would): right after the startup
    probe passes, the readiness exec may hold the guest's one agent slot, and that
    must not count as "no address" (a liveness failure is a real recovery here)."""
    return {
        "startupProbe": {"guestAgentPing": {}, **FAST, "failureThreshold": BOOT_TIMEOUT},
        "livenessProbe": {"httpGet": {"port": HTTP_PORT, "path": "/"},
                          **FAST, "failureThreshold": 2},
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/healthy.txt"]}, **FAST},
        "onLivenessFailure": "report",
        "terminationGracePeriodSeconds": 0,
    }

MONITOR_INTERVAL = 2  # seconds: the resource's monitor operation
MIGRATION_THRESHOLD = 2
DAEMON_DOWN_SECONDS = 30
QUIET_MONITORS = 3  # monitor runs that must pass (and change nothing) in a quiet window
NODES = ("node1", "node2")
ADDRESSES = {"node1": "192.168.213.201", "node2": "192.168.213.202"}


def _wrapper(path: Path, log: Path) -> None:
    """The monitor script: docs/cluster.md's two-line wrapper (`exec vmhealth check
    --liveness`, the domain read from VirtualDomain's $OCF_RESKEY_config), plus one
    line per run in `log` for the test: time, node, exit status, what check said."""
    check = shlex.join([*vmhealth_cli(), "check", "--liveness"])
    path.write_text(
        "#!/bin/sh\n"
        f"out=$({check} 2>&1)\n"
        "rc=$?\n"
        "printf '%s %s %s %s\\n' \"$(date +%s.%N)\" \"$(hostname)\" \"$rc\" "
        f"\"$(printf %s \"$out\" | tr '\\n' ' ')\" >> {shlex.quote(str(log))}\n"
        "printf '%s\\n' \"$out\"\n"
        "exit $rc\n")
    path.chmod(0o755)


class MonitorLog:
    """The monitor script's runs: (time, node, exit status, output)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def runs(self, since: float = 0.0, node: str | None = None) -> list[tuple]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            stamp, host, rc, text = (line.split(" ", 3) + [""])[:4]
            if float(stamp) >= since and (node is None or host == node):
                out.append((float(stamp), host, int(rc), text))
        return out


def _resource_xml(config: Path, wrapper: Path, remote_uri: str, address: str) -> str:
    """The VirtualDomain primitive docs/cluster.md recommends, with the test's times.
    Live migration: each node reaches the other's libvirtd through a unix socket
    (remote_uri, harness/cluster.py's REMOTE_URI) where docs/cluster.md's nodes use
    ssh, and QEMU's migration stream runs over the sandbox's bridge (address), which
    both libvirtds' QEMUs share, as in test_migration.py."""
    primitive = etree.Element("primitive", id=RSC, attrib={
        "class": "ocf", "provider": "heartbeat", "type": "VirtualDomain"})

    def pairs(tag: str, values: dict[str, str]) -> None:
        group = etree.SubElement(primitive, tag, id=f"{RSC}-{tag}")
        for key, value in values.items():
            etree.SubElement(group, "nvpair", id=f"{RSC}-{key}", name=key, value=value)

    pairs("instance_attributes", {
        "config": str(config),
        "monitor_scripts": str(wrapper),
        # The test guest's init ignores ACPI shutdown: stop is a destroy, at once.
        "force_stop": "true",
        "autoset_utilization_cpu": "false",
        "autoset_utilization_hv_memory": "false",
        "autoset_utilization_host_memory": "false",
        "remoteuri": remote_uri,
        "migrateuri": f"tcp://{address}",
        "migrate_options": f"--listen-address {address}",
    })
    pairs("meta_attributes", {
        "migration-threshold": str(MIGRATION_THRESHOLD),
        "failure-timeout": "600s",
        "resource-stickiness": "100",
        "allow-migrate": "true",
        # Created stopped: its location constraint can name it only once it exists.
        "target-role": "Stopped",
    })
    operations = etree.SubElement(primitive, "operations")
    for op, interval, timeout in (("monitor", f"{MONITOR_INTERVAL}s", "30s"),
                                  ("start", "0s", "120s"), ("stop", "0s", "60s"),
                                  ("migrate_to", "0s", "120s"),
                                  ("migrate_from", "0s", "60s")):
        etree.SubElement(operations, "op", id=f"{RSC}-{op}", name=op, interval=interval,
                         timeout=timeout)
    return etree.tostring(primitive, encoding="unicode")


class World:
    """The module's cluster: nodes, daemons (one per host), the hosts' libvirt URIs."""

    def __init__(self, nodes, daemons, uris, monitor_log, guest_spec, console_log) -> None:
        self.nodes = nodes
        self.daemons = daemons
        self.uris = uris
        self.monitor_log = monitor_log
        self.guest_spec = guest_spec
        self.console_log = console_log
        self.conns = {name: libvirt.open(uri) for name, uri in uris.items()}

    def live_node(self):
        """A node whose cluster stack runs, to ask the cluster from."""
        return next(node for node in self.nodes.values() if node.alive())

    def state(self) -> pcmk.ResourceState:
        return pcmk.resource_state(self.live_node(), RSC)

    def fail_count(self, on: str) -> int:
        return pcmk.fail_count(self.live_node(), RSC, on)

    def domain(self, host: str) -> libvirt.virDomain | None:
        try:
            dom = self.conns[host].lookupByName(NAME)
        except libvirt.libvirtError:
            return None
        return dom if dom.isActive() else None

    def guest(self, host: str) -> Guest:
        return Guest(spec=self.guest_spec, console_log=self.console_log,
                     connection=lambda: self.conns[host])

    def wait_started(self, host: str, what: str, timeout: float = BOOT_TIMEOUT) -> dict:
        """Started there (Pacemaker) and live and ready after its startup probe
        (that host's daemon, which adopted it); return the daemon's status."""
        wait_until(lambda: self.state().node == host and self.state().role == "Started",
                   timeout=timeout, what=f"{what}: Pacemaker to start it on {host}")

        def healthy():
            try:
                entry = self.daemons[host].status(NAME)
            except ApiError:
                return None
            probes = entry["probes"]
            ok = (entry["ready"] and entry["live"]
                  and probes["startup"].get("healthy") is True
                  and probes["liveness"].get("lastResult", {}).get("outcome") == "success")
            return entry if ok else None
        return wait_until(healthy, timeout=timeout, interval=0.3,
                          what=f"{what}: {host}'s daemon to see it live and ready")

    def quiet_window(self, host: str, since: float, seconds: float = 0.0) -> list[tuple]:
        """Wait until QUIET_MONITORS monitor runs on `host` after `since` (and at least
        `seconds`); every one must have passed. Returns them."""
        def enough():
            runs = self.monitor_log.runs(since, host)
            long_enough = time.time() - since >= seconds
            return runs if len(runs) >= QUIET_MONITORS and long_enough else None
        runs = wait_until(enough, timeout=seconds + 60, interval=0.5,
                          what=f"{QUIET_MONITORS} monitor runs on {host}")
        assert all(rc == 0 for _t, _h, rc, _o in runs), runs
        return runs


VIRTUAL_DOMAIN = Path("/usr/lib/ocf/resource.d/heartbeat/VirtualDomain")


@pytest.fixture(scope="module")
def world(sandbox, guest_factory):
    for tool in ("corosync", "corosync-cfgtool", "pacemakerd", "cibadmin", "crm_mon",
                 "crm_resource", "crm_attribute"):
        require_tool(tool)
    if not VIRTUAL_DOMAIN.exists():
        missing(f"{VIRTUAL_DOMAIN} is missing (Debian: resource-agents, "
                "scripts/debian-packages.txt)")
    log_dir = sandbox.log_dir / "cluster"
    log_dir.mkdir(exist_ok=True)
    peer = PeerHost(sandbox.log_dir / "cluster-peer", sandbox.log_dir / "console")
    started: list = []
    try:
        peer.start()
        started.append(peer.stop)

        def in_peer_namespace() -> list[str]:
            pid = (PEER_DIR / "libvirtd.pid").read_text().strip()
            return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--"]

        daemons = {}
        for host, uri, spool, launcher in (
                ("node1", sandbox.uri, None, list),
                ("node2", peer.uri, "/run/vmhealth/domains", in_peer_namespace)):
            workdir = log_dir / f"daemon-{host}"
            workdir.mkdir(exist_ok=True)
            daemon = DaemonProcess(workdir, uri, spool_dir=spool, launcher=launcher)
            daemon.start()
            started.append(daemon.stop)
            daemons[host] = daemon

        uris = {"node1": sandbox.uri, "node2": peer.uri}
        remote_uri = pcmk.link_libvirt_sockets({"node1": SANDBOX_SOCKET,
                                                "node2": PEER_SOCKET})
        specs = [pcmk.NodeSpec(name, index + 1, ADDRESSES[name],
                               {"LIBVIRT_DEFAULT_URI": uris[name],
                                "VMHEALTH_SOCKET": daemons[name].socket})
                 for index, name in enumerate(NODES)]
        nodes = {spec.name: pcmk.ClusterNode(spec, specs, log_dir / spec.name,
                                             sandbox.bridge.name) for spec in specs}
        for node in nodes.values():
            node.start()
            started.append(node.stop)
        formed = pcmk.wait_for_cluster(list(nodes.values()))
        print(f"cluster: both nodes online with a DC {formed:.1f}s after start")

        first = nodes["node1"]
        # FENCING DISABLED (harness/cluster.py's INITIAL_CIB), in this test only: the
        # sandbox has no fence device. Checked, not assumed:
        assert first.check("crm_attribute", "--type", "crm_config", "--name",
                           "stonith-enabled", "--query", "--quiet").strip() == "false"

        # The domain's XML with its spec, as VirtualDomain's config: defined once to
        # `vmhealth apply` it, then undefined (VirtualDomain creates it transient).
        guest = guest_factory.create(NAME, start=False, http_port=HTTP_PORT,
                                     watchdog_action=None)
        define_with_spec(guest, _spec())
        config = log_dir / f"{NAME}.xml"
        config.write_text(guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                            | libvirt.VIR_DOMAIN_XML_SECURE))
        guest.dom.undefine()
        wrapper = log_dir / "vmhealth-liveness"
        monitor_log = MonitorLog(log_dir / "monitor.log")
        _wrapper(wrapper, monitor_log.path)

        world = World(nodes, daemons, uris, monitor_log, guest.spec, guest.console_log)
        started.append(lambda: _stop_resource(world))
        first.check("cibadmin", "--create", "--scope", "resources", "--xml-text",
                    _resource_xml(config, wrapper, remote_uri, sandbox.bridge.ipv4))
        first.check("cibadmin", "--create", "--scope", "constraints", "--xml-text",
                    '<rsc_location id="vm-prefers-node1" rsc="vm" node="node1" score="50"/>')
        created = time.monotonic()
        _target_role(world, "Started")
        world.wait_started("node1", "first start")
        print(f"cluster: resource started and live on node1 "
              f"{time.monotonic() - created:.1f}s after it was created")
        yield world
    finally:
        for stop in reversed(started):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                print(f"cluster teardown: {exc!r}")


def _target_role(world: World, role: str) -> None:
    world.live_node().check("crm_resource", "--resource", RSC, "--meta", "--set-parameter",
                            "target-role", "--parameter-value", role)


def _stop_resource(world: World) -> None:
    """Stop the resource through the cluster (so no node restarts it meanwhile)."""
    _target_role(world, "Stopped")
    wait_until(lambda: world.state().node is None, timeout=60,
               what="the resource to stop")


def test_readiness_failure_changes_nothing(world):
    guest = world.guest("node1")
    run_id = world.domain("node1").ID()
    assert guest.exec("rm", "/tmp/healthy.txt").exitcode == 0
    try:
        wait_until(lambda: not world.daemons["node1"].status(NAME)["ready"], timeout=30,
                   what="node1's daemon to see it not ready")
        since = time.time()
        runs = world.quiet_window("node1", since)
        entry = world.daemons["node1"].status(NAME)
        assert not entry["ready"] and entry["live"], entry
        assert "liveness ok" in runs[-1][3]
    finally:
        guest.exec("touch", "/tmp/healthy.txt")
    assert world.domain("node1").ID() == run_id
    assert world.fail_count("node1") == 0
    assert world.state().node == "node1"


def test_daemon_stopped_for_30s_changes_nothing(world):
    daemon = world.daemons["node1"]
    run_id = world.domain("node1").ID()
    daemon.stop()
    try:
        since = time.time()
        runs = world.quiet_window("node1", since, seconds=DAEMON_DOWN_SECONDS)
        assert all("liveness unknown" in output for *_rest, output in runs), runs
    finally:
        daemon.start()
    assert world.domain("node1").ID() == run_id
    assert world.fail_count("node1") == 0
    assert world.state().node == "node1"
    # The restarted daemon adopts the running domain again and finds it healthy.
    world.wait_started("node1", "after the daemon's restart", timeout=60)


def _liveness_failures(world: World) -> int:
    return sum(e["type"] == "LivenessFailed"
               for e in world.daemons["node1"].client.events(domain=NAME))


def test_liveness_failure_restarts_then_relocates(world):
    times = []
    for attempt in range(1, MIGRATION_THRESHOLD + 1):
        run_id = world.domain("node1").ID()
        reported = _liveness_failures(world)
        world.guest("node1").kill_service("httpd", "KILL")
        killed, killed_at = time.monotonic(), time.time()
        wait_until(lambda seen=reported: _liveness_failures(world) > seen, timeout=30,
                   what="node1's daemon to report the liveness failure")
        if attempt < MIGRATION_THRESHOLD:
            wait_until(lambda old=run_id: (dom := world.domain("node1")) is not None
                       and dom.ID() != old, timeout=60,
                       what="Pacemaker to restart the domain on node1")
            world.wait_started("node1", f"restart {attempt}")
            assert world.fail_count("node1") == attempt
        else:
            world.wait_started("node2", "relocation")
            assert world.domain("node1") is None
        failed_monitor = next(t for t, _host, rc, _out in world.monitor_log.runs(killed_at)
                              if rc != 0)
        times.append((failed_monitor - killed_at, time.monotonic() - killed))
    # vmhealth itself took no action: report mode.
    events = list(world.daemons["node1"].client.events(domain=NAME))
    assert not [e for e in events if e["type"] in ("LivenessAction", "LivenessActionFailed")]
    assert [e["fields"].get("action") for e in events
            if e["type"] == "LivenessFailed"][-MIGRATION_THRESHOLD:] == ["report"] * 2
    for (failed, live), what in zip(times, ("restart on node1", "relocation to node2")):
        print(f"cluster: httpd killed -> monitor failed {failed:.1f}s -> {what}, live "
              f"and ready {live:.1f}s")


def test_node_loss_moves_the_resource_and_its_daemon_adopts_it(world):
    assert world.state().node == "node2"
    # node1 is eligible again (its failures were the previous test's).
    world.nodes["node1"].check("crm_resource", "--cleanup", "--resource", RSC,
                               "--node", "node1")
    wait_until(lambda: world.fail_count("node1") == 0, timeout=30,
               what="node1's fail count to be cleared")
    killed, killed_at = time.monotonic(), time.time()
    world.nodes["node2"].kill()
    # What a fence agent would do to the lost host: power its domains off.
    world.domain("node2").destroy()
    wait_until(lambda: world.domain("node1") is not None, timeout=60,
               what="Pacemaker to start it on node1")
    started = time.monotonic() - killed
    entry = world.wait_started("node1", "after node2's loss")
    took = time.monotonic() - killed
    events = [e["type"] for e in world.daemons["node1"].client.events(domain=NAME)
              if e["time"] >= killed_at]
    assert "Adopted" in events, events
    assert entry["probes"]["readiness"].get("lastResult", {}).get("outcome") == "success"
    print(f"cluster: node2's stack killed -> started on node1 {started:.1f}s, live and "
          f"ready {took:.1f}s")


def _boot_id(world: World, host: str) -> str:
    """The guest kernel's boot id, through the agent: the same id on another host
    means the same boot carried over, a live migration and not a stop and a start."""
    result = world.guest(host).exec("cat", "/proc/sys/kernel/random/boot_id")
    assert result.exitcode == 0, result
    return result.stdout.strip()


def _settled(world: World) -> None:
    """Until the cluster has nothing left to do (crm_resource --wait)."""
    world.live_node().check("crm_resource", "--wait", "--timeout", "60s", timeout=90)


# What the daemons must not report while the cluster moves the domain.
NOT_DURING_A_MOVE = ("LivenessFailed", "LivenessAction", "LivenessActionFailed",
                     "RestartBackOff", "RunStrategyStart")


def test_move_live_migrates_and_the_target_daemon_adopts_it(world):
    assert world.state().node == "node1"
    world.nodes["node2"].start()
    rejoined = pcmk.wait_for_cluster(list(world.nodes.values()))
    _settled(world)  # node2 has probed the resource: it runs on node1 only
    assert world.state().node == "node1"
    before = set(pcmk.operations(world.live_node(), RSC))
    boot_id = _boot_id(world, "node1")

    moved, moved_at = time.monotonic(), time.time()
    world.live_node().check("crm_resource", "--move", "--resource", RSC, "--node", "node2")
    try:
        wait_until(lambda: (state := world.state()).node == "node2"
                   and state.role == "Started", timeout=120, interval=0.3,
                   what="Pacemaker to run it on node2")
        running = time.monotonic() - moved
        world.wait_started("node2", "after the move")
        ready = time.monotonic() - moved
    finally:
        # The move's constraint goes; stickiness keeps the domain where it is now.
        world.live_node().check("crm_resource", "--clear", "--resource", RSC)
    _settled(world)
    assert world.state().node == "node2"
    assert world.domain("node1") is None

    # A live migration: Pacemaker's migrate_to on node1 and migrate_from on node2, no
    # start on node2, and the guest's kernel kept running throughout.
    new = set(pcmk.operations(world.live_node(), RSC)) - before
    done = {(op.node, op.task) for op in new}
    assert {("node1", "migrate_to"), ("node2", "migrate_from")} <= done, new
    assert ("node2", "start") not in done, new
    assert all(op.rc == 0 for op in new), new
    assert _boot_id(world, "node2") == boot_id

    # No monitor failed, no fail count, nothing restarted by either daemon.
    runs = world.monitor_log.runs(moved_at)
    assert runs and all(rc == 0 for _t, _host, rc, _out in runs), runs
    assert any(host == "node2" for _t, host, _rc, _out in runs), runs
    assert world.fail_count("node1") == world.fail_count("node2") == 0
    assert not world.state().failed
    events = {host: [e for e in daemon.client.events(domain=NAME) if e["time"] >= moved_at]
              for host, daemon in world.daemons.items()}
    for host, seen in events.items():
        assert not [e for e in seen if e["type"] in NOT_DURING_A_MOVE], (host, seen)
    assert "Adopted" in [e["type"] for e in events["node2"]], events["node2"]
    released = [e["message"] for e in events["node1"] if e["type"] == "Released"]
    assert any("migrated" in message for message in released), events["node1"]
    print(f"cluster: node2 back, both nodes online with a DC {rejoined:.1f}s after its "
          f"start")
    print(f"cluster: crm_resource --move to node2 -> live-migrated, running on node2 "
          f"{running:.1f}s, live and ready there {ready:.1f}s")
