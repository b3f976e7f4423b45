"""The qemu-ga RPC filter and watchdog edits, against the distros' stock files."""

from __future__ import annotations

import pytest
from tests.unit.guest_support import ROOTS

from vmhealth.guest import edits

STOCK = {name: (ROOTS / name / "etc/sysconfig/qemu-ga").read_text()
         for name in ("rhel8", "rhel9.2", "rhel9.4", "fedora40")}


@pytest.mark.parametrize("name, variable", [("rhel8", "BLACKLIST_RPC"),
                                            ("rhel9.2", "BLOCK_RPCS")])
def test_block_list_loses_exactly_the_exec_rpcs(name, variable):
    new, changes = edits.open_exec_in_env(STOCK[name])
    line = next(line for line in new.splitlines() if line.startswith(variable + "="))
    assert line == (f"{variable}=guest-file-open,guest-file-close,guest-file-read,"
                    "guest-file-write,guest-file-seek,guest-file-flush")
    assert changes == [f"/etc/sysconfig/qemu-ga {variable}: removed guest-exec, "
                       "guest-exec-status from the block list"]
    # Everything else (comments, the fsfreeze hook) is untouched.
    assert [line for line in new.splitlines() if not line.startswith(variable)] == \
        [line for line in STOCK[name].splitlines() if not line.startswith(variable)]


def test_rhel94_allow_list_gains_the_exec_rpcs_and_keeps_its_quotes():
    new, changes = edits.open_exec_in_env(STOCK["rhel9.4"])
    line = next(line for line in new.splitlines() if line.startswith("FILTER_RPC_ARGS="))
    assert line.startswith('FILTER_RPC_ARGS="--allow-rpcs=guest-sync-delimited,')
    assert line.endswith(',guest-get-cpustats,guest-exec,guest-exec-status"')
    assert changes == ["/etc/sysconfig/qemu-ga FILTER_RPC_ARGS: added guest-exec to "
                       "--allow-rpcs"]


def test_fedora_stock_file_blocks_nothing():
    assert edits.exec_blocks_in_env(STOCK["fedora40"]) == []


@pytest.mark.parametrize("text, expected", [
    ('QEMU_GA_ARGS="--block-rpcs=guest-exec,guest-file-open -v"\n',
     'QEMU_GA_ARGS="--block-rpcs=guest-file-open -v"\n'),
    ("QEMU_GA_ARGS=-b guest-exec-status\n", "QEMU_GA_ARGS=-b \n"),
    ("FILTER_RPC_ARGS='--allow-rpcs guest-ping'\n",
     "FILTER_RPC_ARGS='--allow-rpcs guest-ping,guest-exec,guest-exec-status'\n"),
    ("BLOCK_RPCS=\n", "BLOCK_RPCS=\n"),
    ("# BLOCK_RPCS=guest-exec\n", "# BLOCK_RPCS=guest-exec\n"),  # comments stay as they are
])
def test_env_variants(text, expected):
    assert edits.open_exec_in_env(text)[0] == expected


@pytest.mark.parametrize("name", sorted(STOCK))
def test_env_edit_is_idempotent(name):
    once = edits.open_exec_in_env(STOCK[name])[0]
    assert edits.open_exec_in_env(once) == (once, [])
    assert edits.exec_blocks_in_env(once) == []


def test_qemu_ga_conf_block_and_allow_lists():
    text = "[general]\nverbose=1\nblock-rpcs=guest-exec;guest-file-open;\n" \
           "allow-rpcs=guest-ping;\n[other]\nblock-rpcs=guest-exec;\n"
    new, changes = edits.open_exec_in_conf(text)
    assert new == ("[general]\nverbose=1\nblock-rpcs=guest-file-open;\n"
                   "allow-rpcs=guest-ping;guest-exec;guest-exec-status;\n"
                   "[other]\nblock-rpcs=guest-exec;\n")
    assert len(changes) == 2
    assert edits.open_exec_in_conf(new) == (new, [])


@pytest.mark.parametrize("argv, blocked", [
    (["-m", "virtio-serial", "--block-rpcs=guest-exec,guest-exec-status"], 2),
    (["--block-rpcs", "guest-file-open"], 0),
    (["--allow-rpcs=guest-ping"], 2),
    (["--allow-rpcs=guest-ping,guest-exec,guest-exec-status"], 0),
    ([], 0),
])
def test_running_agent_arguments(argv, blocked):
    assert len(edits.exec_blocks_in_args(argv)) == blocked


def test_watchdog_conf_uncomments_the_stock_lines_in_place():
    stock = (ROOTS / "debian12/etc/watchdog.conf").read_text()
    new, changes = edits.edit_watchdog_conf(stock, 60, 10)
    assert "\nwatchdog-device = /dev/watchdog\n" in new
    assert "#watchdog-device" not in new
    assert "\nwatchdog-timeout = 60\n" in new and "\ninterval = 10\n" in new
    # realtime/priority are already right in the stock file: their lines are not rewritten
    assert "realtime\t\t= yes\n" in new
    assert len(changes) == 3
    assert len(new.splitlines()) == len(stock.splitlines())
    assert edits.edit_watchdog_conf(new, 60, 10) == (new, [])
    changed, changes = edits.edit_watchdog_conf(new, 120, 10)
    assert "\nwatchdog-timeout = 120\n" in changed and changes == [
        "/etc/watchdog.conf: watchdog-timeout 60 -> 120"]


def test_watchdog_conf_comments_out_duplicates_and_creates_missing_file():
    new, _ = edits.edit_watchdog_conf("interval = 1\ninterval = 5\n", 30, 5)
    assert new.startswith("interval = 5\n# interval = 5\n")
    created, _ = edits.edit_watchdog_conf("", 30, 5)
    assert "watchdog-device = /dev/watchdog\n" in created


def test_debian_default():
    stock = (ROOTS / "debian12/etc/default/watchdog").read_text()
    new, changes = edits.edit_debian_default(stock, "i6300esb")
    assert "run_watchdog=1\n" in new and 'watchdog_module="i6300esb"\n' in new
    assert "run_wd_keepalive=0\n" in new
    assert edits.edit_debian_default(new, "i6300esb") == (new, [])


def test_script_form_edits_a_root(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "etc/sysconfig").mkdir(parents=True)
    (root / "etc/sysconfig/qemu-ga").write_text(STOCK["rhel9.2"])
    assert edits.main(["--root", str(root), "--open-exec", "--watchdog-timeout", "30",
                       "--watchdog-interval", "5", "--debian-module", "i6300esb"]) == 0
    out = capsys.readouterr().out
    assert "BLOCK_RPCS: removed guest-exec" in out
    assert "guest-exec" not in (root / "etc/sysconfig/qemu-ga").read_text().split(
        "BLOCK_RPCS=")[1].splitlines()[0]
    assert (root / "etc/watchdog.conf").read_text().count("watchdog-timeout = 30") == 1
    assert edits.main(["--root", str(root), "--open-exec"]) == 0
    assert "already as required" in capsys.readouterr().out
