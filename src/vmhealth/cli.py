"""The `vmhealth` command line: the root group and the commands that edit a domain's
definition (apply, show, remove, probes pause|resume).

The other commands live in cli_daemon (daemon, status, wait, events, probe),
cli_guest (guest, cloudinit) and cli_hook (hook); what they all share (the context,
the errors, --connect, the exit codes) is in cli_context, which its docstring
describes. Those modules never import this one. Nothing is written to a domain's
definition when anything fails.
"""

from __future__ import annotations

import dataclasses
import difflib
import json

import click
import yaml

from vmhealth import __version__
from vmhealth.cli_check import check_command, cluster_conflicts
from vmhealth.cli_context import Context, Failure, UsageFailure, connect_option, pass_context
from vmhealth.cli_daemon import (
    daemon_command,
    events_command,
    probe_command,
    status_command,
    wait_command,
)
from vmhealth.cli_guest import cloudinit, guest
from vmhealth.cli_hook import hook
from vmhealth.connection import (  # libvirt: None where vmhealth runs on a guest
    LibvirtError,
    define,
    libvirt,
    persistent_xml,
)
from vmhealth.domainxml import (
    NAMESPACE,
    PREFIX,
    apply_spec,
    health_element,
    is_applied,
    normalise,
    read_spec,
    remove_spec,
)
from vmhealth.manifest import ManifestError, load_manifest
from vmhealth.spec import SpecError, spec_to_dict
from vmhealth.terminal import echo
from vmhealth.xmlsafe import XmlError

MULTIPLE_WATCHDOGS_SINCE = 9_001_000  # libvirt 9.1.0 accepts several <watchdog> devices


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vmhealth")
@connect_option
@click.pass_context
def main(ctx: click.Context) -> None:
    """KubeVirt-style health checks for libvirt/KVM domains.

    Declare probes and a watchdog for a domain from a KubeVirt manifest or a vmhealth
    spec (`apply`), and let the vmhealth daemon run them. The spec is stored in the
    domain's own definition, in <metadata> under the namespace
    https://vmhealth.dev/xmlns/health/1.
    """
    ctx.ensure_object(Context)


def _load(source: str, domain: str):
    try:
        loaded = load_manifest(source, domain_name=domain)
    except (ManifestError, SpecError) as exc:
        raise UsageFailure(f"invalid spec: {exc}") from None
    for warning in loaded.warnings:  # accepted, as Kubernetes accepts it, but worth a word
        echo(f"{domain}: warning: {warning}", err=True)
    return loaded.spec


def _diff(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff((before + "\n").splitlines(keepends=True),
                                 (after + "\n").splitlines(keepends=True),
                                 fromfile=f"{name} (current)", tofile=f"{name} (applied)")
    return "".join(lines)


@main.command()
@click.argument("domain")
@click.option("-f", "--filename", "source", required=True, metavar="FILE",
              help="KubeVirt VirtualMachine(Instance) manifest or vmhealth spec, YAML or "
                   "JSON; '-' reads stdin.")
@click.option("--dry-run", is_flag=True, help="Print the XML diff; change nothing.")
@click.option("--cluster-managed", is_flag=True,
              help="A cluster manager (Pacemaker) recovers DOMAIN: warn when the spec "
                   "would make vmhealth act too (docs/cluster.md).")
@connect_option
@pass_context
def apply(ctx: Context, domain: str, source: str, dry_run: bool,
          cluster_managed: bool) -> None:
    """Store a health spec in DOMAIN's definition and add its watchdog device.

    \b
    Examples:
      vmhealth apply web1 -f vmi.yaml
      kubectl get vmi web1 -o yaml | vmhealth apply web1 -f -
      vmhealth apply web1 -f spec.yaml --dry-run

    The persistent definition is changed once (defineXML). On a running domain the
    probes take effect at once (the daemon re-reads the spec); a watchdog device takes
    effect at the next boot.
    """
    spec = _load(source, domain)
    for problem in cluster_conflicts(spec) if cluster_managed else ():
        echo(f"{domain}: warning: cluster-managed: {problem}", err=True)
    conn, dom = ctx.domain(domain)
    if not dom.isPersistent():
        raise Failure(f"domain {domain!r} is transient; vmhealth keeps the spec in the "
                      "persistent definition (make it persistent: virsh dumpxml "
                      f"{domain} > {domain}.xml && virsh define {domain}.xml)")
    current = persistent_xml(dom)
    multiple = conn.getLibVersion() >= MULTIPLE_WATCHDOGS_SINCE
    try:
        edit = apply_spec(current, spec, allow_multiple_watchdogs=multiple)
    except XmlError as exc:
        raise UsageFailure(f"cannot apply to {domain}: {exc}") from None
    if is_applied(current, spec):
        click.echo(f"{domain}: unchanged")
        return
    if dry_run:
        # Diff the definition without secrets (graphics passwords...), both sides
        # serialised the same way so only real changes show.
        public = persistent_xml(dom, secure=False)
        shown = apply_spec(public, spec, allow_multiple_watchdogs=multiple).xml
        click.echo(_diff(normalise(public), shown, domain), nl=False)
        for change in edit.changes:
            click.echo(f"{domain}: would have {change}")
        return
    _define_and_report(conn, dom, domain, edit, health_element(edit.xml))
    if dom.isActive() and edit.devices_changed:
        click.echo(f"{domain}: the domain is running; the watchdog change takes effect at "
                   "its next boot (a full shutdown and start, not a reboot)")


@main.command()
@click.argument("domain")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@connect_option
@pass_context
def show(ctx: Context, domain: str, output: str) -> None:
    """Print DOMAIN's health spec, defaults spelled out."""
    _conn, dom = ctx.domain(domain)
    try:
        spec = read_spec(persistent_xml(dom, secure=False))
    except (XmlError, SpecError) as exc:
        raise Failure(f"{domain}: stored spec is unreadable: {exc} (fix it with "
                      "`vmhealth apply` or drop it with `vmhealth remove`)") from None
    if spec is None:
        raise Failure(f"{domain}: no vmhealth spec (add one with `vmhealth apply {domain} "
                      "-f FILE`)")
    data = spec_to_dict(spec)
    # Escaped for the terminal: a spec stored by another tool may hold anything.
    if output == "json":
        echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)


@main.group()
def probes() -> None:
    """Pause or resume DOMAIN's guest-agent ping probes (maintenance in the guest).

    The equivalent of KubeVirt's kubevirt.io/pause-guest-agent-probes annotation: the
    spec's guestAgentPingPaused is set in the domain's definition (and its live
    metadata, so the daemon follows at once). While paused, guestAgentPing probes are
    not run: neither failures nor successes are counted. `vmhealth status` shows it.
    """


@probes.command("pause")
@click.argument("domain")
@connect_option
@pass_context
def pause_probes(ctx: Context, domain: str) -> None:
    """Stop running DOMAIN's guest-agent ping probes until `probes resume`."""
    _set_ping_paused(ctx, domain, True)


@probes.command("resume")
@click.argument("domain")
@connect_option
@pass_context
def resume_probes(ctx: Context, domain: str) -> None:
    """Run DOMAIN's guest-agent ping probes again."""
    _set_ping_paused(ctx, domain, False)


def _set_ping_paused(ctx: Context, domain: str, paused: bool) -> None:
    conn, dom = ctx.domain(domain)
    current = persistent_xml(dom)
    try:
        spec = read_spec(current)
    except (XmlError, SpecError) as exc:
        raise Failure(f"{domain}: stored spec is unreadable: {exc}") from None
    if spec is None:
        raise Failure(f"{domain}: no vmhealth spec (add one with `vmhealth apply {domain} "
                      "-f FILE`)")
    word = "paused" if paused else "running"
    if spec.guest_agent_ping_paused == paused:
        click.echo(f"{domain}: guest-agent ping probes already {word}")
        return
    changed = dataclasses.replace(spec, guest_agent_ping_paused=paused)
    multiple = conn.getLibVersion() >= MULTIPLE_WATCHDOGS_SINCE
    edit = apply_spec(current, changed, allow_multiple_watchdogs=multiple)
    _define_and_report(conn, dom, domain, edit, health_element(edit.xml))
    click.echo(f"{domain}: guest-agent ping probes {word}")


@main.command()
@click.argument("domain")
@connect_option
@pass_context
def remove(ctx: Context, domain: str) -> None:
    """Remove DOMAIN's health spec and undo vmhealth's device changes."""
    conn, dom = ctx.domain(domain)
    try:
        edit = remove_spec(persistent_xml(dom))
    except XmlError as exc:
        raise Failure(f"{domain}: {exc}") from None
    if edit is None:
        click.echo(f"{domain}: no vmhealth spec; nothing to remove")
        return
    _define_and_report(conn, dom, domain, edit, None)


def _define_and_report(conn, dom, domain: str, edit, live_element: str | None) -> None:
    """Write the new persistent definition (once), say what changed, and mirror the
    spec (or its absence) into a running domain's live metadata."""
    try:
        define(conn, edit.xml)
    except LibvirtError as exc:
        raise Failure(f"{domain}: {exc}") from None
    for change in edit.changes:
        click.echo(f"{domain}: {change}")
    if dom.isActive():
        _set_live_metadata(dom, domain, live_element)


def _set_live_metadata(dom, domain: str, element: str | None) -> None:
    """Mirror the spec into the running domain's metadata, so the daemon and the hook
    (on migrate) see it now rather than at the next boot."""
    try:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element,
                        PREFIX if element is not None else None, NAMESPACE,
                        libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as exc:
        click.echo(f"{domain}: warning: the running domain's metadata was not updated "
                   f"({exc.get_error_message()}); probes follow at the next start", err=True)
        return
    click.echo(f"{domain}: " + ("updated the running domain's metadata" if element else
                                "cleared the running domain's metadata"))


# What the entry point and the tests import from here (command modules import
# cli_context instead: nothing imports this module but the entry point and tests).
__all__ = ["main", "Context"]

main.add_command(guest)
main.add_command(cloudinit)
main.add_command(daemon_command)
main.add_command(status_command)
main.add_command(wait_command)
main.add_command(events_command)
main.add_command(probe_command)
main.add_command(hook)
main.add_command(check_command)
