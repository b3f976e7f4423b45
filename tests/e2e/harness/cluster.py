"""A two-node Pacemaker/Corosync cluster inside the e2e sandbox.

Each node is Corosync and Pacemaker in namespaces of their own, nested in the
sandbox's: a network namespace (Pacemaker's and Corosync's IPC are abstract unix
sockets, one set per network namespace, so two nodes in one would be one node), a
mount namespace (tmpfs over /etc/corosync, /var/lib/corosync, /var/lib/pacemaker and
/dev/shm, where libqb keeps its IPC buffers), a UTS namespace (its own host name) and
a pid namespace whose init is the node's holder process, so killing the holder kills
the node's whole cluster stack at once, as a crashed or powered-off host would.

The node's network is a veth pair: one end (eth0, 192.168.213.20N) in the node, the
other on the sandbox's bridge, where the guests and the other node are; Corosync talks
knet over it. Libvirt is not in the node: each node drives a libvirtd of its own
(node1 the sandbox's, node2 the peer host's, harness/peer.py) through its unix socket,
which the node's VirtualDomain agent finds through LIBVIRT_DEFAULT_URI, and each
node's `vmhealth check` asks its own host's vmhealth daemon (VMHEALTH_SOCKET): both
variables are in pacemakerd's environment, which the resource agents inherit.

A node holder (`python -m tests.e2e.harness.cluster --init ...`, under unshare) is
pid 1 of the node (tools.sandbox.namespace.run_as_init reaps); its child makes the
mounts, writes corosync.conf, says NETNS, waits for "go" on stdin (the test has
plugged the veth in meanwhile), starts corosync and pacemakerd, says READY, and stops
them both when its stdin closes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.sandbox import namespace, paths
from tools.sandbox.sandbox import mount_tmpfs
from tools.sandbox.waiting import wait_until
from vmhealth.xmlsafe import parse_xml

from .peer import _read_line

CLUSTER_NAME = "vmhealth-e2e"
PRIVATE_DIRS = ("/etc/corosync", "/var/lib/corosync", "/var/lib/pacemaker",
                "/var/log/pacemaker")
# The sandbox's libvirtd sockets (node1), the peer's (node2, harness/peer.py), and
# one link per node to its libvirtd's socket (LINK_DIR).
SHARED_RUN_DIRS = ("libvirt", "vmh-peer", "vmh-cluster")
# On the sandbox's /run tmpfs: <node>-libvirt-sock, a link to that node's libvirtd's
# socket, so that one URI with the node's name in it reaches either libvirtd: what
# VirtualDomain's remoteuri needs to migrate (its %n is the target node's name).
LINK_DIR = Path("/run/vmh-cluster")
REMOTE_URI = f"qemu+unix:///system?socket={LINK_DIR}/%n-libvirt-sock"
PACEMAKER_DIRS = ("cib", "pengine", "blackbox", "cores")
NETNS, READY, GO = "NETNS", "READY", "go"
# Corosync's token timeout (ms): the default is 3000 (+650 per node beyond two); 1000
# lets the test see a node loss sooner. docs/cluster.md gives the production values.
TOKEN_MS = 1000


@dataclass(frozen=True)
class NodeSpec:
    name: str
    nodeid: int
    address: str  # on the sandbox's bridge, /24
    env: dict[str, str] = field(default_factory=dict)  # for pacemakerd and its agents


def link_libvirt_sockets(sockets: dict[str, Path]) -> str:
    """LINK_DIR/<node>-libvirt-sock -> that node's libvirtd socket, for every node
    (before the nodes start: their /run binds LINK_DIR in); returns REMOTE_URI."""
    LINK_DIR.mkdir(exist_ok=True)
    for name, socket in sockets.items():
        link = LINK_DIR / f"{name}-libvirt-sock"
        link.unlink(missing_ok=True)
        link.symlink_to(socket)
    return REMOTE_URI


def corosync_conf(nodes: list[NodeSpec]) -> str:
    lines = [
        "# Written by the vmhealth e2e harness (tests/e2e/harness/cluster.py).",
        "totem {", "  version: 2", f"  cluster_name: {CLUSTER_NAME}", "  transport: knet",
        "  crypto_cipher: none", "  crypto_hash: none", f"  token: {TOKEN_MS}", "}",
        "nodelist {"]
    for node in nodes:
        lines += ["  node {", f"    ring0_addr: {node.address}", f"    name: {node.name}",
                  f"    nodeid: {node.nodeid}", "  }"]
    lines += ["}",
              # Two nodes: the survivor of a node loss keeps quorum (votequorum's
              # two_node, which also waits for both nodes at the first start).
              "quorum {", "  provider: corosync_votequorum", "  two_node: 1", "}",
              "logging {", "  to_stderr: no", "  to_syslog: no", "  to_logfile: yes",
              "  logfile: /var/log/pacemaker/corosync.log", "  timestamp: on", "}", ""]
    return "\n".join(lines)


# The CIB each node starts from. dc-deadtime: how long a starting node waits for a DC
# before it calls an election; the default 20 s would be most of a fresh cluster's
# start. stonith-enabled=false: FENCING IS DISABLED, for the e2e test only (the
# sandbox has no fence device; docs/cluster.md: production clusters must fence).
INITIAL_CIB = """\
<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="opt-recheck" name="cluster-recheck-interval" value="1min"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for sub in path.iterdir():
        os.chown(sub, uid, gid)


def _private_run() -> None:
    """A /run of the node's own (corosync's lock file is /run/corosync.pid), with the
    libvirt sockets the nodes use bound back in from the sandbox's /run."""
    host_run = Path("/var/lib/corosync/sandbox-run")
    host_run.mkdir()
    subprocess.run(["mount", "--rbind", "/run", str(host_run)], check=True)
    mount_tmpfs("/run")
    for keep in SHARED_RUN_DIRS:
        if (host_run / keep).is_dir():
            (Path("/run") / keep).mkdir()
            subprocess.run(["mount", "--rbind", str(host_run / keep), f"/run/{keep}"],
                           check=True)


def stack(name: str, log_dir: Path, conf: str, env: dict[str, str]) -> int:
    """The node's cluster stack, inside its namespaces (module docstring)."""
    import grp
    import pwd

    for path in PRIVATE_DIRS:
        mount_tmpfs(path)
    _private_run()
    # Every daemon (root and hacluster alike) makes its IPC buffers here.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm"],
                   check=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    # Logs outside the node (the run's log directory), through a bind mount.
    subprocess.run(["mount", "--bind", str(log_dir), "/var/log/pacemaker"], check=True)
    subprocess.run(["hostname", name], check=True)
    Path("/etc/corosync/corosync.conf").write_text(conf)
    uid, gid = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
    lib = Path("/var/lib/pacemaker")
    for sub in PACEMAKER_DIRS:
        (lib / sub).mkdir(mode=0o750)
    cib = lib / "cib" / "cib.xml"
    cib.write_text(INITIAL_CIB)
    cib.chmod(0o600)
    os.chown(cib, uid, gid)
    _chown_tree(lib, uid, gid)
    os.chown("/var/log/pacemaker", uid, gid)
    print(NETNS, flush=True)
    if sys.stdin.readline().strip() != GO:
        return 1
    processes = [subprocess.Popen(["corosync", "-f"], stdin=subprocess.DEVNULL)]  # noqa: S607
    try:
        wait_until(lambda: subprocess.run(["corosync-cfgtool", "-s"], capture_output=True,
                                          check=False).returncode == 0,
                   timeout=30, what=f"{name}: corosync to answer")
        pcmk_env = {**os.environ, "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",
                    **env}
        processes.append(subprocess.Popen(["pacemakerd"], env=pcmk_env,  # noqa: S607
                                          stdin=subprocess.DEVNULL))
        print(READY, flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    return 0


class ClusterNode:
    """One node: start() (it plugs its veth in), kill() or stop(); start() again
    after kill() is the lost node coming back."""

    def __init__(self, spec: NodeSpec, nodes: list[NodeSpec], log_dir: Path,
                 bridge: str) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self.bridge = bridge
        self._conf = corosync_conf(nodes)
        self._holder: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        assert self._holder is not None
        return self._holder.pid

    def start(self, timeout: float = 60) -> None:
        unshare = shutil.which("unshare")
        assert unshare, "unshare(1) is missing"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "corosync.conf").write_text(self._conf)
        self._holder = subprocess.Popen(  # noqa: S603 - fixed argv
            [unshare, "--net", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
             "--propagation", "private", "--kill-child", "--",
             sys.executable, "-m", "tests.e2e.harness.cluster", "--init", self.name,
             str(self.log_dir), json.dumps(self.spec.env)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(paths.REPO))
        assert self._holder.stdout is not None
        line = _read_line(self._holder.stdout, timeout)
        if line != NETNS:
            self.kill()
            raise AssertionError(f"cluster node {self.name} did not start: {line!r}")
        self._plug_in()
        assert self._holder.stdin is not None
        self._holder.stdin.write(GO + "\n")
        self._holder.stdin.flush()
        line = _read_line(self._holder.stdout, timeout)
        if line != READY:
            self.kill()
            raise AssertionError(f"cluster node {self.name}'s stack did not start: {line!r}")

    def _plug_in(self) -> None:
        outside = f"cl-{self.name}"[:15]
        # A node started again after kill(): its old veth goes with its old network
        # namespace, which the kernel frees a moment after the node's last process.
        wait_until(lambda: subprocess.run(["ip", "link", "show", outside],  # noqa: S607
                                          capture_output=True, check=False).returncode,
                   timeout=30, what=f"{outside} of {self.name}'s previous start to go")
        run = _checked
        run(["ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0",
             "netns", str(self.pid)])
        run(["ip", "link", "set", outside, "master", self.bridge, "up"])
        run(self.nsenter("ip", "link", "set", "lo", "up"))
        run(self.nsenter("ip", "addr", "add", f"{self.spec.address}/24", "dev", "eth0"))
        run(self.nsenter("ip", "link", "set", "eth0", "up"))

    def nsenter(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "--net", "--mount", "--uts", "--", *argv]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.nsenter(*argv), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def check(self, *argv: str, timeout: float = 30) -> str:
        result = self.run(*argv, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(argv)} exited "
                                 f"{result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def alive(self) -> bool:
        return self._holder is not None and self._holder.poll() is None

    def kill(self) -> None:
        """The node's cluster stack dies at once (SIGKILL to its pid namespace's init
        through unshare --kill-child), as on a crashed host."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        holder.kill()
        holder.wait(timeout=30)

    def stop(self) -> None:
        """Stop corosync and pacemaker cleanly (the holder's stdin closes)."""
        holder = self._holder
        if holder is None:
            return
        assert holder.stdin is not None
        try:
            holder.stdin.close()
            holder.wait(timeout=90)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            pass
        self.kill()


def _checked(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: "
                             f"{result.stderr.strip()}")


@dataclass
class ResourceState:
    node: str | None  # where it is started, or None
    role: str
    failed: bool


def crm_mon(node: ClusterNode) -> object:
    """crm_mon's one-shot XML on `node` (parsed safely), with fail counts."""
    return parse_xml(node.check("crm_mon", "--one-shot", "--output-as", "xml",
                                "--include", "failcounts"), "crm_mon XML")


def online_nodes(node: ClusterNode) -> set[str]:
    root = crm_mon(node)
    return {n.get("name") for n in root.iter("node")
            if n.get("online") == "true" and n.getparent().tag == "nodes"}


def has_dc(node: ClusterNode) -> bool:
    summary = crm_mon(node).find("summary/current_dc")
    return summary is not None and summary.get("present") == "true"


def resource_state(node: ClusterNode, rsc: str) -> ResourceState:
    root = crm_mon(node)
    for resource in root.iter("resource"):
        if resource.get("id") == rsc:
            where = resource.find("node")
            return ResourceState(where.get("name") if where is not None else None,
                                 resource.get("role", ""), resource.get("failed") == "true")
    return ResourceState(None, "", False)


def fail_count(node: ClusterNode, rsc: str, on: str) -> int:
    """Pacemaker's fail count of `rsc` on node `on` (0 when there is none)."""
    root = crm_mon(node)
    for history in root.iter("node"):
        if history.get("name") != on or history.getparent().tag != "node_history":
            continue
        for entry in history.iter("resource_history"):
            if entry.get("id") == rsc:
                return int(entry.get("fail-count", "0") or 0)
    return 0


@dataclass(frozen=True)
class Operation:
    """One entry of a resource's operation history in the CIB's status section."""
    node: str
    task: str  # start, stop, monitor, migrate_to, migrate_from, ...
    interval_ms: int
    rc: int
    changed: int  # last-rc-change, seconds since the epoch


def operations(node: ClusterNode, rsc: str) -> list[Operation]:
    """`rsc`'s operation history on every node, as the CIB records it: the last
    non-recurring operation, each recurring one, the last failure, and (kept apart,
    because the scheduler needs them) the migrate_to and migrate_from operations."""
    root = parse_xml(node.check("cibadmin", "--query", "--scope", "status"), "CIB status")
    history = []
    for state in root.iter("node_state"):
        for resource in state.iter("lrm_resource"):
            if resource.get("id") != rsc:
                continue
            history += [Operation(state.get("uname", ""), op.get("operation", ""),
                                  int(op.get("interval", "0") or 0),
                                  int(op.get("rc-code", "-1")),
                                  int(op.get("last-rc-change", "0") or 0))
                        for op in resource.iter("lrm_rsc_op")]
    return history


def wait_for_cluster(nodes: list[ClusterNode], timeout: float = 120) -> float:
    """Wait until every node sees every node online and a DC; return the seconds."""
    start = time.monotonic()
    names = {n.name for n in nodes}
    wait_until(lambda: all(online_nodes(n) == names and has_dc(n) for n in nodes),
               timeout=timeout, what="both cluster nodes online with a DC", interval=0.5)
    return time.monotonic() - start


def _init(name: str, log_dir: str, env: str) -> int:
    """pid 1 of the node: run the stack as a child and reap (namespace.run_as_init)."""
    return namespace.run_as_init(
        [sys.executable, "-m", "tests.e2e.harness.cluster", "--stack", name, log_dir, env],
        cwd=str(paths.REPO))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--init":
        sys.exit(_init(*sys.argv[2:]))
    if len(sys.argv) == 5 and sys.argv[1] == "--stack":
        conf = (Path(sys.argv[3]) / "corosync.conf").read_text()
        sys.exit(stack(sys.argv[2], Path(sys.argv[3]), conf, json.loads(sys.argv[4])))
    sys.exit("usage: python -m tests.e2e.harness.cluster --init NAME LOG_DIR ENV_JSON "
             "(started by ClusterNode)")
