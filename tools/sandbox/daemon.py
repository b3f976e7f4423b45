"""`vmhealth daemon` as a subprocess of an e2e test: its own config, API socket and log
in a directory of the run's logs, and the ways tests talk to it (API client, CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import libvirt

from vmhealth.domainxml import apply_spec
from vmhealth.hook.spool import SPOOL_DIR_ENV
from vmhealth.monitor.client import ApiClient, ApiError
from vmhealth.spec import parse_spec

from .waiting import wait_until

BOOT_TIMEOUT = 150  # several TCG guests boot at once on 2 shared cores


def vmhealth_cli() -> list[str]:
    script = Path(sys.executable).with_name("vmhealth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmhealth.cli"]


class DaemonProcess:
    """One daemon for one libvirt URI.

    spool_dir: where it watches for the hook's files (default: a directory of its own,
    so it adopts through libvirt's events alone).  launcher: argv the daemon is run
    under, e.g. nsenter into the mount namespace whose hook writes that spool.
    """

    def __init__(self, workdir: Path, uri: str, spool_dir: Path | None = None,
                 launcher: Callable[[], list[str]] = list, tcp_listen: str = "",
                 web_config_file: Path | None = None) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "api.sock")
        self.config = workdir / "vmhealth.conf"
        # tcp_listen, web_config_file: the read-only web listener ([api], docs/prometheus.md)
        web = f"tcp_listen = {tcp_listen}\n" if tcp_listen else ""
        web += f"web_config_file = {web_config_file}\n" if web_config_file else ""
        self.config.write_text(
            f"[daemon]\nlibvirt_uri = {uri}\n"
            "state_refresh_seconds = 0.5\n[api]\n"
            f"socket_path = {self.socket}\n" + web)
        # Not a config key: the daemon and the hook both read VMHEALTH_SPOOL_DIR.
        self.spool_dir = spool_dir or workdir / "spool"
        self.log = workdir / "daemon.log"
        self.launcher = launcher
        self.process: subprocess.Popen | None = None
        self.client = ApiClient(self.socket, timeout=10)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [*self.launcher(), *vmhealth_cli(), "daemon", "--config", str(self.config)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env={**os.environ, SPOOL_DIR_ENV: str(self.spool_dir)},
                # Its own session: a Ctrl-C meant for the demo must not stop it
                # before stop() can check that SIGTERM stops it cleanly.
                start_new_session=True)
        wait_until(lambda: self.client.status()["libvirtConnected"], timeout=30,
                   what="the daemon to answer on its socket")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        """SIGTERM, and check that the daemon stopped cleanly: exit status 0 and no
        traceback anywhere in its log."""
        if self.process is None or self.process.poll() is not None:
            return
        status = self.kill(signal.SIGTERM)
        text = self.log.read_text(errors="replace")
        assert status == 0, f"the daemon exited {status} on SIGTERM; log: {self.log}"
        assert "Traceback" not in text, f"a traceback in the daemon's log: {self.log}"

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([*vmhealth_cli(), *args], capture_output=True, text=True,
                              timeout=timeout, check=False,
                              env={**os.environ, "VMHEALTH_SOCKET": self.socket})

    def status(self, domain: str) -> dict:
        return self.client.status(domain)


def wait_status(daemon: DaemonProcess, domain: str, what: str, predicate,
                timeout: float = BOOT_TIMEOUT) -> dict:
    """Wait until the daemon's status of `domain` satisfies predicate; return it."""
    def check():
        try:
            entry = daemon.status(domain)
        except ApiError:
            return None
        return entry if predicate(entry) else None
    return wait_until(check, timeout=timeout, what=f"{domain}: {what}", interval=0.3)


def current_run_id(guest) -> int:
    """The domain's current id (a virDomain object keeps the id it was looked up with)."""
    return guest.dom.connect().lookupByUUIDString(guest.dom.UUIDString()).ID()


def define_with_spec(guest, spec: dict) -> None:
    """Store the spec in the persistent definition (as `vmhealth apply` does)."""
    xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    guest.dom.connect().defineXML(apply_spec(xml, parse_spec(spec)).xml)
