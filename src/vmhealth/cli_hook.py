"""`vmhealth hook install|uninstall|status`: the libvirt qemu hook on this host.

Both directories default to where distribution packages of libvirt keep them. A libvirt
built from source with another prefix uses others, compiled in: its hook directory is
SYSCONFDIR/libvirt/hooks (e.g. /usr/local/etc/libvirt/hooks) and its daemons' pidfiles
are in RUNSTATEDIR/libvirt (e.g. /usr/local/var/run/libvirt); an init system without
systemd may keep the pidfile elsewhere (`libvirtd --pid-file FILE`; OpenRC scripts use
/run/libvirtd.pid, so --pid-dir /run). --hooks-dir and --pid-dir name them.
"""

from __future__ import annotations

from pathlib import Path

import click

from vmhealth.cli_context import Failure, NotOk
from vmhealth.hook import install as hook_install

_hooks_dir_option = click.option(
    "--hooks-dir", default=str(hook_install.DEFAULT_HOOKS_DIR), show_default=True,
    type=click.Path(file_okay=False), metavar="DIR",
    help="libvirt's hook directory (SYSCONFDIR/libvirt/hooks of the libvirt build: "
         "another one only for a libvirt built with another prefix).")
_pid_dir_option = click.option(
    "--pid-dir", default=str(hook_install.DEFAULT_PID_DIR), show_default=True,
    type=click.Path(file_okay=False), metavar="DIR",
    help="Where virtqemud.pid or libvirtd.pid is when systemd does not run libvirt "
         "(it is asked first when it runs).")


def _echo_all(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


@click.group("hook")
def hook() -> None:
    """The libvirt qemu hook that hands domains to the vmhealth daemon."""


@hook.command("install")
@_hooks_dir_option
@_pid_dir_option
@click.option("--stub/--no-stub", default=False, show_default=True,
              help="Also install an empty DIR/qemu if there is none (only libvirt "
                   "builds that ignore qemu.d without it need this).")
@click.option("--reload/--no-reload", "reload_daemon", default=True, show_default=True,
              help="Reload virtqemud or libvirtd so that it runs the hook.")
def install_command(hooks_dir: str, pid_dir: str, stub: bool, reload_daemon: bool) -> None:
    """Install (or update) the hook in DIR/qemu.d/vmhealth."""
    try:
        _echo_all(hook_install.install(Path(hooks_dir), stub=stub))
        if reload_daemon:
            click.echo(hook_install.reload_libvirt(Path(pid_dir)))
    except (hook_install.InstallError, OSError) as exc:
        raise Failure(str(exc)) from None
    click.echo(hook_install.selinux_advice())


@hook.command("uninstall")
@_hooks_dir_option
@_pid_dir_option
@click.option("--reload/--no-reload", "reload_daemon", default=True, show_default=True,
              help="Reload virtqemud or libvirtd so that it stops running the hook.")
def uninstall_command(hooks_dir: str, pid_dir: str, reload_daemon: bool) -> None:
    """Remove the hook (and the stub, if vmhealth installed it)."""
    try:
        _echo_all(hook_install.uninstall(Path(hooks_dir)))
        if reload_daemon:
            click.echo(hook_install.reload_libvirt(Path(pid_dir)))
    except (hook_install.InstallError, OSError) as exc:
        raise Failure(str(exc)) from None


@hook.command("status")
@_hooks_dir_option
@_pid_dir_option
def status_command(hooks_dir: str, pid_dir: str) -> None:
    """Show whether the hook is installed and current; exit 1 when it is not."""
    try:
        current, lines = hook_install.status(Path(hooks_dir), Path(pid_dir))
    except hook_install.InstallError as exc:
        raise Failure(str(exc)) from None
    _echo_all(lines)
    if not current:
        raise NotOk()
