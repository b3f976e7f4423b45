"""`vmhealth hook install|uninstall|status`: the libvirt qemu hook on this host."""

from __future__ import annotations

from pathlib import Path

import click

from vmhealth.hook import install as hook_install

_root_option = click.option(
    "--root", default=str(hook_install.DEFAULT_ROOT), show_default=True,
    help="libvirt's hook directory; change it only for tests (libvirt's is compiled in).")
# Where the daemons' pidfiles are, when systemd is not running; for tests.
_pid_dir_option = click.option("--pid-dir", default=str(hook_install.DEFAULT_PID_DIR),
                               hidden=True)


def _echo_all(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


@click.group("hook")
def hook() -> None:
    """The libvirt qemu hook that hands domains to the vmhealth daemon."""


@hook.command("install")
@_root_option
@_pid_dir_option
@click.option("--stub/--no-stub", default=False, show_default=True,
              help="Also install an empty <root>/qemu if there is none (only libvirt "
                   "builds that ignore qemu.d without it need this).")
@click.option("--reload/--no-reload", "reload_daemon", default=True, show_default=True,
              help="Reload virtqemud or libvirtd so that it runs the hook.")
def install_command(root: str, pid_dir: str, stub: bool, reload_daemon: bool) -> None:
    """Install (or update) the hook in <root>/qemu.d/vmhealth."""
    try:
        _echo_all(hook_install.install(Path(root), stub=stub))
        if reload_daemon:
            click.echo(hook_install.reload_libvirt(Path(pid_dir)))
    except (hook_install.InstallError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(hook_install.selinux_advice())


@hook.command("uninstall")
@_root_option
@_pid_dir_option
@click.option("--reload/--no-reload", "reload_daemon", default=True, show_default=True)
def uninstall_command(root: str, pid_dir: str, reload_daemon: bool) -> None:
    """Remove the hook (and the stub, if vmhealth installed it)."""
    try:
        _echo_all(hook_install.uninstall(Path(root)))
        if reload_daemon:
            click.echo(hook_install.reload_libvirt(Path(pid_dir)))
    except (hook_install.InstallError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@hook.command("status")
@_root_option
@_pid_dir_option
def status_command(root: str, pid_dir: str) -> None:
    """Show whether the hook is installed and current; exit 1 when it is not."""
    try:
        current, lines = hook_install.status(Path(root), Path(pid_dir))
    except hook_install.InstallError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_all(lines)
    if not current:
        click.get_current_context().exit(1)
