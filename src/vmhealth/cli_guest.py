"""`vmhealth guest` (inside a guest) and `vmhealth cloudinit` (on the host): the guest plan."""

from __future__ import annotations

from pathlib import Path

import click

from vmhealth import seediso
from vmhealth.cli_context import Context, Failure, UsageFailure, connect_option, pass_context
from vmhealth.cloudinit_render import UserDataError, render
from vmhealth.connection import LibvirtError, libvirt, persistent_xml  # libvirt: None on guests
from vmhealth.domainxml import read_spec
from vmhealth.guest.distro import RENDER_TARGETS, DistroError, detect
from vmhealth.guest.plan import agent_only_spec, build_plan
from vmhealth.guest.setup import run_check, run_setup
from vmhealth.guest.system import GuestSystem
from vmhealth.manifest import ManifestError, load_manifest
from vmhealth.spec import HealthSpec, SpecError
from vmhealth.xmlsafe import XmlError, parse_xml

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
# libosinfo OS id prefixes (virt-install writes them into <metadata>) -> render target.
LIBOSINFO_TARGETS = (
    ("http://fedoraproject.org/", "fedora"),
    ("http://redhat.com/rhel/", "rhel9"),
    ("http://centos.org/", "rhel9"),
    ("http://rockylinux.org/", "rhel9"),
    ("http://almalinux.org/", "rhel9"),
    ("http://debian.org/", "debian"),
    ("http://ubuntu.com/", "debian"),
)


def _load_spec(path: str, domain: str | None = None) -> HealthSpec:
    try:
        return load_manifest(path, domain).spec
    except (ManifestError, SpecError, OSError) as exc:
        raise UsageFailure(str(exc)) from None


# ---------------------------------------------------------------------------
# vmhealth guest
# ---------------------------------------------------------------------------

@click.group()
def guest() -> None:
    """Prepare this guest for its health spec (run inside the guest, as root)."""


def _plan_for(spec_file: str | None, root: str):
    try:
        distro = detect(root)
    except DistroError as exc:
        raise Failure(str(exc)) from None
    spec = _load_spec(spec_file) if spec_file else agent_only_spec()
    return build_plan(spec, distro)


root_option = click.option("--root", default="/", show_default=True,
                           type=click.Path(file_okay=False, exists=True),
                           help="Root directory of the guest system; any other than / is "
                                "offline (nothing is started).")
spec_option = click.option("--spec", "spec_file", metavar="FILE",
                           help="The domain's KubeVirt manifest or vmhealth spec ('-' for "
                                "stdin). Without it: the guest agent only.")


@guest.command()
@spec_option
@root_option
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
def setup(spec_file: str | None, root: str, dry_run: bool) -> None:
    """Install and configure what the spec's probes and watchdog need in this guest."""
    plan = _plan_for(spec_file, root)
    click.echo(f"guest: {plan.distro.describe()}")
    if spec_file is None:
        click.echo("no --spec: preparing the guest agent only")
    for note in plan.notes:
        click.echo(f"note: {note}")
    changed = failed = False
    for report in run_setup(plan, GuestSystem(root), dry_run=dry_run):
        if report.error:
            failed = True
            click.echo(f"FAILED  {report.title}: {report.error}")
        elif not report.missing:
            click.echo(f"ok      {report.title}")
        elif dry_run:
            click.echo(f"would   {report.title}")
            for item in report.missing:
                click.echo(f"          - {item}")
        else:
            changed = True
            click.echo(f"changed {report.title}")
            for item in report.changes:
                click.echo(f"          - {item}")
    if failed:
        raise Failure("guest setup did not complete (see FAILED above)")
    if not changed and not dry_run:
        click.echo("nothing changed: the guest already matches the plan")


@guest.command()
@spec_option
@root_option
def check(spec_file: str | None, root: str) -> None:
    """Report what this guest lacks for the spec; exit 1 if anything is missing."""
    plan = _plan_for(spec_file, root)
    missing = 0
    for item in run_check(plan, GuestSystem(root)):
        word = {True: "ok", False: "MISSING", None: "unknown"}[item.ok]
        missing += item.ok is False
        click.echo(f"{word:8}{item.name}: {item.detail}")
    if missing:
        raise Failure(f"{missing} item(s) missing; `vmhealth guest setup` fixes what it can")


# ---------------------------------------------------------------------------
# vmhealth cloudinit
# ---------------------------------------------------------------------------

@click.group()
def cloudinit() -> None:
    """cloud-init user data and NoCloud seeds that prepare guests for their spec."""


def _distro_from_xml(root) -> str | None:
    os_el = root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os")
    os_id = os_el.get("id", "") if os_el is not None else ""
    return next((target for prefix, target in LIBOSINFO_TARGETS if os_id.startswith(prefix)),
                None)


def _from_domain(ctx: Context, name: str) -> tuple[HealthSpec, str | None, str]:
    """(spec, distro named by libosinfo metadata, domain UUID) of a defined domain."""
    _conn, dom = ctx.domain(name)
    try:
        xml = persistent_xml(dom)
        spec = read_spec(xml)
    except (LibvirtError, XmlError, SpecError) as exc:
        raise Failure(f"{name}: {exc}") from None
    if spec is None:
        raise Failure(f"{name} has no health spec; `vmhealth apply {name} -f FILE` first, "
                      "or render from a file with --spec")
    return spec, _distro_from_xml(parse_xml(xml)), dom.UUIDString()


def _target(distro: str | None, found: str | None):
    name = distro or found
    if name is None:
        raise UsageFailure("--distro is required: the domain's metadata names no OS "
                           f"(choose one of {', '.join(RENDER_TARGETS)})")
    return RENDER_TARGETS[name]


distro_option = click.option("--distro", type=click.Choice(sorted(RENDER_TARGETS)),
                             help="Guest distribution (default: from the domain's libosinfo "
                                  "metadata).")


def _render(spec: HealthSpec, distro) -> str:
    try:
        return render(spec, distro)
    except UserDataError as exc:
        raise UsageFailure(str(exc)) from None


@cloudinit.command("render")
@click.option("--spec", "spec_file", metavar="FILE",
              help="KubeVirt manifest or vmhealth spec ('-' for stdin).")
@click.option("--domain", metavar="DOMAIN", help="Use the spec stored in this domain.")
@distro_option
@connect_option
@pass_context
def render_command(ctx: Context, spec_file: str | None, domain: str | None,
                   distro: str | None) -> None:
    """Print #cloud-config user data for the spec, merged with the manifest's own."""
    if (spec_file is None) == (domain is None):
        raise UsageFailure("give exactly one of --spec FILE or --domain DOMAIN")
    if spec_file is not None:
        spec, found = _load_spec(spec_file, domain), None
    else:
        spec, found, _uuid = _from_domain(ctx, domain)
    click.echo(_render(spec, _target(distro, found)), nl=False)


@cloudinit.command("seed")
@click.argument("domain")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the ISO.")
@click.option("--spec", "spec_file", metavar="FILE",
              help="Render from this file instead of the domain's stored spec.")
@click.option("--network-config", type=click.File("r"),
              help="A NoCloud network-config (v1 or v2 YAML) to include.")
@click.option("--instance-id", help="meta-data instance-id (default: the domain's UUID; a "
                                    "new one makes cloud-init run its per-instance modules "
                                    "again).")
@click.option("--attach", is_flag=True,
              help="Add the ISO to the domain's persistent definition as a read-only cdrom.")
@distro_option
@connect_option
@pass_context
def seed_command(ctx: Context, domain: str, output: str, spec_file: str | None,
                 network_config, instance_id: str | None, attach: bool,
                 distro: str | None) -> None:
    """Write a NoCloud seed ISO (label cidata) for DOMAIN.

    With --spec and --instance-id (and no --attach) libvirt is not asked at all: the
    seed can be written for a domain defined elsewhere."""
    spec, found, uuid = _from_domain(ctx, domain) if spec_file is None else (
        _load_spec(spec_file, domain), None, None)
    if instance_id is None and uuid is None:
        uuid = ctx.domain(domain)[1].UUIDString()
    files = {"user-data": _render(spec, _target(distro, found)),
             "meta-data": seediso.meta_data(instance_id or uuid, domain)}
    if network_config is not None:
        files["network-config"] = network_config.read()
    try:
        seediso.write_atomic(output, seediso.build_iso(files))
    except seediso.SeedToolMissing as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"cannot write {output}: {exc}") from None
    click.echo(f"wrote {output} (label {seediso.VOLUME_LABEL}: {', '.join(files)})")
    if attach:
        _conn, dom = ctx.domain(domain)
        try:
            added = seediso.attach_seed(dom, output)
        except (LibvirtError, libvirt.libvirtError, ValueError) as exc:
            raise Failure(f"{domain}: cannot attach {output}: {exc}") from None
        where = Path(output).resolve()
        click.echo(f"{domain}: " + (f"attached {where} as a read-only cdrom (persistent; read "
                                    "at the next boot)" if added else
                                    "the seed is already attached"))

