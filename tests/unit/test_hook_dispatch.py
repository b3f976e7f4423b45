"""The hook's dispatch and its edges, exactly: messages, bounds, the timer, the streams.

Most of these were found by mutation testing (docs/testing.md): a message changed, a
bound moved by one, a cache never used, and every earlier test still passed.
"""

from __future__ import annotations

import io
import re
import signal
import stat
from pathlib import Path

import pytest

from vmhealth.hook import main as hook_main
from vmhealth.hook import persistent, spool, validate
from vmhealth.hook.scan import MAX_XML_BYTES

DATA = Path(__file__).resolve().parents[1] / "data" / "hook"
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
WITH_SPEC = (DATA / "restore-unchanged-in.xml").read_text()
INVALID = WITH_SPEC.replace('"successThreshold":1', '"successThreshold":2')


def reason_of(xml: str) -> str:
    """The rules' own words (vmhealth.spec_rules), whatever they are today."""
    with pytest.raises(validate.InvalidSpec) as refused:
        validate.full_check(xml.encode())
    return str(refused.value)


INVALID_REASON = reason_of(INVALID)


def hook(tmp_path: Path, argv: list[str], xml: str | bytes = WITH_SPEC):
    stdin = io.BytesIO(xml) if isinstance(xml, bytes) else io.StringIO(xml)
    stdout = io.BytesIO() if isinstance(xml, bytes) else io.StringIO()
    stderr = io.StringIO()
    code = hook_main.main(argv, stdin, stdout, stderr, spool_dir=str(tmp_path / "spool"),
                          config_dir=str(tmp_path / "qemu"))
    return code, stdout.getvalue(), stderr.getvalue()


def with_watchdogs(count: int, action: str = "poweroff") -> str:
    tag = f'<watchdog model="i6300esb" action="{action}">'
    return WITH_SPEC.replace('<watchdog model="i6300esb" action="reset">',
                             f"<watchdog model='ib700' action='{action}'/>\n    " * (count - 1)
                             + tag)


# ---------------------------------------------------------------------------
# Arguments and messages
# ---------------------------------------------------------------------------

def test_usage_names_the_arguments():
    stderr = io.StringIO()
    assert hook_main.main(["vmhealth", "web1"], io.StringIO(), io.StringIO(), stderr) == 0
    assert stderr.getvalue() == ("usage: vmhealth-hook DOMAIN OPERATION SUB-OPERATION EXTRA "
                                 "(run by libvirt, domain XML on stdin)\n")


def test_domain_and_operation_are_enough(tmp_path):
    code, _out, err = hook(tmp_path, ["vmhealth", "web1", "prepare"], INVALID)
    assert code == 1
    assert INVALID_REASON in err


def test_the_refusal_names_domain_reason_and_fix(tmp_path):
    assert hook(tmp_path, ["vmhealth", "web1", "prepare", "begin", "-"], INVALID) == (
        1, "", f"vmhealth: domain 'web1' not started: its health spec is invalid: "
               f"{INVALID_REASON}. Fix it with `vmhealth apply web1 -f FILE` or remove it "
               "with `vmhealth remove web1`.\n")


@pytest.mark.parametrize(("name", "shown", "in_command"), [
    ("w" * 200, "'" + "w" * 200 + "'", "w" * 200),
    ("w" * 201, "(a domain with an unprintable name)", "w" * 201),
    ("bad\nname", "(a domain with an unprintable name)", "DOMAIN"),
])
def test_domain_names_are_shown_only_when_short_and_printable(tmp_path, name, shown,
                                                              in_command):
    _code, _out, err = hook(tmp_path, ["vmhealth", name, "prepare", "begin", "-"], INVALID)
    assert err.startswith(f"vmhealth: domain {shown} not started: ")
    assert err.endswith(f"Fix it with `vmhealth apply {in_command} -f FILE` or remove it "
                        f"with `vmhealth remove {in_command}`.\n")


def test_unreadable_input_names_the_operation(tmp_path):
    code, _out, err = hook(tmp_path, ["vmhealth", "web1", "stopped", "end", "-"], "garbage")
    assert code == 0
    assert re.fullmatch(r"vmhealth: stopped: the document is not well-formed XML: .*; "
                        r"libvirt goes ahead\n", err)


def test_a_bug_names_the_operation_and_asks_for_a_report(tmp_path, monkeypatch):
    def broken(_run):
        raise KeyError("oops")

    monkeypatch.setitem(hook_main.OPERATIONS, "started", broken)
    assert hook(tmp_path, ["vmhealth", "web1", "started", "begin", "-"]) == (
        0, "", "vmhealth: started: internal error KeyError: 'oops'; libvirt goes ahead "
               "(please report this)\n")


# ---------------------------------------------------------------------------
# prepare's cache; the namespace in plain text
# ---------------------------------------------------------------------------

def test_a_known_spec_is_not_checked_again(tmp_path, monkeypatch):
    argv = ["vmhealth", "web1", "prepare", "begin", "-"]
    assert hook(tmp_path, argv) == (0, "", "")
    checks = []
    monkeypatch.setattr(validate, "full_check", lambda *args: checks.append(args))
    assert hook(tmp_path, argv) == (0, "", "")
    assert checks == []


def test_a_cache_that_cannot_be_written_is_a_note(tmp_path):
    (tmp_path / "spool").write_text("a file where the directory should be")
    code, _out, err = hook(tmp_path, ["vmhealth", "web1", "prepare", "begin", "-"])
    assert code == 0
    assert re.fullmatch(r"vmhealth: note: could not cache the spec check \(.+\); the next "
                        r"start checks again\n", err)


@pytest.mark.parametrize("op", ["prepare", "started"])
def test_the_namespace_in_plain_text_is_no_spec(tmp_path, op):
    xml = WITH_SPEC.split("<metadata>")[0] + "<description>https://vmhealth.dev/xmlns/" \
        "health/1</description>\n" + WITH_SPEC.split("</metadata>\n")[1]
    assert hook(tmp_path, ["vmhealth", "web1", op, "begin", "-"], xml) == (0, "", "")
    assert not (tmp_path / "spool").exists()


# ---------------------------------------------------------------------------
# migrate / restore
# ---------------------------------------------------------------------------

def test_a_spec_without_a_watchdog_changes_nothing(tmp_path):
    xml = WITH_SPEC.replace(',"watchdog":{"action":"reset","model":"i6300esb","name":'
                            '"watchdog"}', "")
    assert '"watchdog"' not in xml
    assert hook(tmp_path, ["vmhealth", "web1", "restore", "begin", "-"], xml) == (0, "", "")


@pytest.mark.parametrize(("count", "lines"), [(10, 10), (11, 11)])
def test_changes_are_listed_up_to_ten(tmp_path, count, lines):
    _code, out, err = hook(tmp_path, ["vmhealth", "web1", "restore", "begin", "-"],
                           with_watchdogs(count))
    assert out.count('action="reset"') + out.count("action='reset'") == count
    assert len(err.splitlines()) == lines
    assert ("more watchdogs" in err) is (count > 10)


def test_libvirts_own_directory_is_the_default():
    assert persistent.config_dir(None, {}) == "/etc/libvirt/qemu"
    assert persistent.config_dir(None, {persistent.CONFIG_DIR_ENV: "/x"}) == "/x"
    assert persistent.config_dir("/y", {persistent.CONFIG_DIR_ENV: "/x"}) == "/y"


def test_the_environment_points_restore_at_another_directory(tmp_path, monkeypatch):
    # What benchmarks/bench_hook.py relies on: the host's /etc/libvirt is never read.
    seen = []
    monkeypatch.setattr(persistent, "definition",
                        lambda uuid, directory: seen.append(directory))
    monkeypatch.setenv(persistent.CONFIG_DIR_ENV, str(tmp_path / "elsewhere"))
    hook_main.main(["vmhealth", "web1", "restore", "begin", "-"], io.StringIO(WITH_SPEC),
                   io.StringIO(), io.StringIO(), spool_dir=str(tmp_path / "spool"))
    assert seen == [str(tmp_path / "elsewhere")]


# ---------------------------------------------------------------------------
# Streams, the time limit, the spool directory's parents
# ---------------------------------------------------------------------------

class Recording(io.BytesIO):
    def read(self, size=-1):
        self.asked = size
        return super().read(size)


def test_stdin_is_read_up_to_one_byte_past_the_limit():
    stdin = Recording(b" " * (MAX_XML_BYTES + 5))
    assert len(hook_main._read(stdin)) == MAX_XML_BYTES + 1
    assert stdin.asked == MAX_XML_BYTES + 1
    exact = b" " * MAX_XML_BYTES
    assert hook_main._read(io.BytesIO(exact)) == exact


def test_text_streams_carry_any_byte():
    # Tests give text streams; bytes that are not UTF-8 survive both ways.
    assert hook_main._read(io.StringIO("a\udcffb")) == b"a\xffb"
    out = io.StringIO()
    hook_main._write(out, b"a\xffb")
    assert out.getvalue() == "a\udcffb"


def test_the_timer_is_disarmed_and_the_handler_restored(tmp_path):
    previous = signal.getsignal(signal.SIGALRM)
    hook(tmp_path, ["vmhealth", "web1", "started", "begin", "-"])
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is previous


def test_spool_parents_are_created_as_makedirs_would(tmp_path):
    target = tmp_path / "run" / "vmhealth" / "domains"
    spool.write_atomic(str(target), UUID, spool.XML_SUFFIX, b"<domain/>")
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    # Parents are not the hook's to lock down (the daemon's socket lives in one).
    assert stat.S_IMODE(target.parent.stat().st_mode) & 0o055 == 0o055 & ~_umask()
    assert (target / f"{UUID}.xml").read_bytes() == b"<domain/>"
    assert spool.read(str(target) + "/", UUID, spool.XML_SUFFIX) == b"<domain/>"


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_spool_directory_is_the_default_or_the_sandboxs_variable():
    assert spool.spool_dir(None, {}) == "/run/vmhealth/domains"
    assert spool.spool_dir(None, {spool.SPOOL_DIR_ENV: "/tmp/s"}) == "/tmp/s"
    assert spool.environment("VMHEALTH_SURELY_UNSET_VARIABLE") is None


@pytest.mark.parametrize(("op", "persistent_definition"), [
    ("prepare", False), ("restore", False), ("restore", True)])
def test_each_document_is_parsed_once(tmp_path, monkeypatch, op, persistent_definition):
    # A second parse of the same XML was a tenth of the first check's cost.
    if persistent_definition:
        (tmp_path / "qemu").mkdir()
        (tmp_path / "qemu" / "web1.xml").write_text(WITH_SPEC)
    again = []
    monkeypatch.setattr(validate, "scan", lambda data: again.append(data))
    code, _out, err = hook(tmp_path, ["vmhealth", "web1", op, "begin", "-"],
                           with_watchdogs(1))
    assert (code, again) == (0, [])
    assert "internal error" not in err
