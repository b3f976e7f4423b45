"""The libvirt hook, operation by operation: StringIO streams in, exit code, output
and spool files out; golden XML for the migrate/restore filter; hostile input."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.golden import check_golden

import vmhealth
from vmhealth.hook import main as hook_main
from vmhealth.hook import spool, validate
from vmhealth.hook.launcher import render

DATA = Path(__file__).resolve().parents[1] / "data" / "hook"
REPO = Path(__file__).resolve().parents[2]
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
WITH_SPEC = (DATA / "restore-unchanged-in.xml").read_text()
PLAIN = """<domain type='kvm'>
  <name>plain</name>
  <uuid>0b3d9c6e-5a43-4f0e-9d3c-2a1e0c7b8f61</uuid>
  <devices>
    <watchdog model='i6300esb' action='poweroff'/>
  </devices>
</domain>
"""
PLAIN_UUID = "0b3d9c6e-5a43-4f0e-9d3c-2a1e0c7b8f61"


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "vmhealth" / "domains"


def run_hook(spool_dir: Path, op: str, xml: str | bytes, domain: str = "web1",
             **kwargs) -> Result:
    sub = "end" if op in ("stopped", "release") else "begin"
    if isinstance(xml, bytes):
        stdin, stdout = io.BytesIO(xml), io.BytesIO()
    else:
        stdin, stdout = io.StringIO(xml), io.StringIO()
    stderr = io.StringIO()
    # libvirt's persistent definitions: a directory of this test's own, never /etc.
    kwargs.setdefault("config_dir", str(config_dir_of(spool_dir)))
    code = hook_main.main(["vmhealth", domain, op, sub, "-"], stdin, stdout, stderr,
                          spool_dir=str(spool_dir), **kwargs)
    out = stdout.getvalue()
    return Result(code, out.decode() if isinstance(out, bytes) else out, stderr.getvalue())


def config_dir_of(spool_dir: Path) -> Path:
    return spool_dir.parents[2] / "etc" / "libvirt" / "qemu"


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def invalid_spec_xml() -> str:
    return WITH_SPEC.replace('"periodSeconds":10', '"periodSeconds":-1')


# ---------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------

def test_prepare_without_metadata_passes_and_writes_nothing(spool_dir):
    result = run_hook(spool_dir, "prepare", PLAIN)
    assert (result.code, result.stdout, result.stderr) == (0, "", "")
    assert not spool_dir.exists()


def test_prepare_valid_spec_passes_and_caches_the_verdict(spool_dir, monkeypatch):
    result = run_hook(spool_dir, "prepare", WITH_SPEC)
    assert (result.code, result.stdout, result.stderr) == (0, "", "")
    assert (spool_dir / f"{UUID}.validated").exists()

    def must_not_run(_data):
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(validate, "full_check", must_not_run)
    assert run_hook(spool_dir, "prepare", WITH_SPEC).code == 0


def test_prepare_checks_again_when_the_spec_changed(spool_dir):
    assert run_hook(spool_dir, "prepare", WITH_SPEC).code == 0
    assert run_hook(spool_dir, "prepare", invalid_spec_xml()).code == 1


def test_prepare_refuses_an_invalid_spec_with_the_reason(spool_dir):
    result = run_hook(spool_dir, "prepare", invalid_spec_xml())
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "vmhealth: domain 'web1' not started: its health spec is invalid: "
        "metadata.spec.livenessProbe.periodSeconds: must be between 1 and 2147483647 "
        "(or 0 for the default, 10), got -1. Fix it with `vmhealth apply web1 -f FILE` "
        "or remove it with `vmhealth remove web1`.\n")
    assert not (spool_dir / f"{UUID}.validated").exists()


def test_prepare_refuses_an_unknown_metadata_version(spool_dir):
    result = run_hook(spool_dir, "prepare", WITH_SPEC.replace('version="1"', 'version="7"'))
    assert result.code == 1
    assert "vmhealth metadata has version '7'" in result.stderr


def with_spec_text(xml: str, text: str) -> str:
    start = xml.index("<spec>") + len("<spec>")
    return xml[:start] + text + xml[xml.index("</spec>"):]


# Past the C scanner's recursion limit, past the depth bound only, past the size bound.
NESTED_TOO_DEEP = {
    "5000 levels": ("[" * 5000 + "]" * 5000, "metadata.spec: nested deeper than 32 levels"),
    "33 levels": ('{"livenessProbe":' + "[" * 32 + "]" * 32 + "}",
                  "metadata.spec: nested deeper than 32 levels"),
    "70000 characters": ('"' + "x" * 70000 + '"',
                         "metadata.spec: 70002 characters long, more than the 65536 allowed"),
}


@pytest.mark.parametrize("case", sorted(NESTED_TOO_DEEP))
def test_prepare_refuses_a_spec_beyond_the_json_bounds_with_the_reason(spool_dir, case):
    text, reason = NESTED_TOO_DEEP[case]
    result = run_hook(spool_dir, "prepare", with_spec_text(WITH_SPEC, text))
    assert result.code == 1
    assert result.stderr.startswith(
        f"vmhealth: domain 'web1' not started: its health spec is invalid: {reason} "
        "(a health spec is a few hundred characters and nests at most 5 levels). "
        "Fix it with `vmhealth apply web1 -f FILE`")
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_filter_leaves_a_spec_beyond_the_json_bounds_alone(spool_dir, op):
    source = (DATA / "restore-action-changed-in.xml").read_text()
    result = run_hook(spool_dir, op, with_spec_text(source, NESTED_TOO_DEEP["5000 levels"][0]))
    assert (result.code, result.stdout) == (0, "")
    assert result.stderr.startswith(f"vmhealth: {op}: watchdog left as it is, the health "
                                    "spec is invalid: metadata.spec: nested deeper than 32")


def test_prepare_refuses_unreadable_xml_that_carries_our_namespace(spool_dir):
    broken = WITH_SPEC.replace("</domain>", "")
    result = run_hook(spool_dir, "prepare", broken)
    assert result.code == 1
    assert "its XML mentions vmhealth but cannot be read: the document is not " \
           "well-formed XML" in result.stderr


def test_prepare_ignores_the_namespace_in_plain_text(spool_dir):
    xml = PLAIN.replace("<devices>", "<description>see https://vmhealth.dev/xmlns/health/1"
                                     "</description>\n  <devices>")
    assert (run_hook(spool_dir, "prepare", xml).code, run_hook(spool_dir, "prepare", xml)
            .stderr) == (0, "")


def test_prepare_hides_an_unprintable_domain_name(spool_dir):
    result = run_hook(spool_dir, "prepare", invalid_spec_xml(), domain="bad\nname")
    assert result.code == 1
    assert "(a domain with an unprintable name)" in result.stderr
    assert "\nname" not in result.stderr


# ---------------------------------------------------------------------------
# started / reconnect / stopped / release
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["started", "reconnect"])
def test_started_hands_the_xml_to_the_daemon(spool_dir, op):
    result = run_hook(spool_dir, op, WITH_SPEC)
    assert (result.code, result.stdout, result.stderr) == (0, "", "")
    spooled = spool_dir / f"{UUID}.xml"
    assert spooled.read_text() == WITH_SPEC
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600
    assert sorted(os.listdir(spool_dir)) == [f"{UUID}.xml"]  # no temporary file left


def test_started_tightens_a_loose_spool_directory(spool_dir):
    spool_dir.mkdir(parents=True, mode=0o755)
    spool_dir.chmod(0o755)
    run_hook(spool_dir, "started", WITH_SPEC)
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700


def test_started_without_metadata_writes_nothing(spool_dir):
    assert run_hook(spool_dir, "started", PLAIN).code == 0
    assert not spool_dir.exists()


@pytest.mark.parametrize("op", ["stopped", "release"])
def test_stop_removes_the_runtime_files_and_keeps_the_cache(spool_dir, op):
    assert run_hook(spool_dir, "prepare", WITH_SPEC).code == 0
    assert run_hook(spool_dir, "started", WITH_SPEC).code == 0
    result = run_hook(spool_dir, op, WITH_SPEC)
    assert (result.code, result.stdout, result.stderr) == (0, "", "")
    assert os.listdir(spool_dir) == [f"{UUID}.validated"]


def test_stop_removes_the_file_even_when_the_metadata_is_gone(spool_dir):
    run_hook(spool_dir, "started", WITH_SPEC)
    # `virsh metadata --live --remove` while it ran: the stop XML has no namespace.
    without = WITH_SPEC.split("<metadata>")[0] + WITH_SPEC.split("</metadata>\n")[1]
    assert run_hook(spool_dir, "stopped", without).code == 0
    assert not (spool_dir / f"{UUID}.xml").exists()


@pytest.mark.parametrize("op", ["stopped", "release"])
def test_a_stop_never_fails(spool_dir, op, tmp_path):
    spool_dir.parent.mkdir(parents=True)
    spool_dir.write_text("a file where the directory should be")
    for xml in (WITH_SPEC, "garbage", "", "<domain><uuid>../../etc</uuid></domain>"):
        result = run_hook(spool_dir, op, xml)
        assert result.code == 0
        assert result.stdout == ""


def test_started_refuses_a_symlinked_spool_directory(spool_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spool_dir.parent.mkdir(parents=True)
    spool_dir.symlink_to(elsewhere)
    result = run_hook(spool_dir, "started", WITH_SPEC)
    assert result.code == 0  # a start never fails over the hand-off
    assert "is not a directory" in result.stderr
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------
# migrate / restore
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case,op", [("restore-action-changed", "restore"),
                                     ("migrate-two-watchdogs", "migrate")])
def test_filter_aligns_watchdog_actions_golden(spool_dir, case, op):
    source = (DATA / f"{case}-in.xml").read_text()
    result = run_hook(spool_dir, op, source)
    assert result.code == 0
    check_golden(DATA / f"{case}-out.xml", result.stdout)
    assert result.stderr.startswith(f"vmhealth: {op}: watchdog ")


def test_filter_changes_nothing_but_the_action(spool_dir):
    source = (DATA / "restore-action-changed-in.xml").read_text()
    out = run_hook(spool_dir, "restore", source).stdout
    assert out == source.replace('action="poweroff">', 'action="reset">')


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_filter_prints_nothing_when_nothing_changes(spool_dir, op):
    for xml in (WITH_SPEC, PLAIN):
        result = run_hook(spool_dir, op, xml)
        assert (result.code, result.stdout, result.stderr) == (0, "", "")


def test_filter_reports_a_missing_watchdog_for_the_next_cold_boot(spool_dir):
    source = (DATA / "restore-watchdog-missing-in.xml").read_text()
    result = run_hook(spool_dir, "restore", source)
    assert (result.code, result.stdout) == (0, "")  # never adds a device
    assert ("vmhealth: restore: the spec asks for a i6300esb watchdog (action poweroff) "
            "that the running domain lacks") in result.stderr
    assert "takes effect at the next cold boot" in result.stderr
    # Said in libvirt's log, and nothing written: no part of vmhealth would read it.
    assert not spool_dir.exists() or os.listdir(spool_dir) == []


def test_filter_leaves_an_invalid_spec_to_prepare(spool_dir):
    source = (DATA / "restore-action-changed-in.xml").read_text()
    broken = source.replace('"periodSeconds":10', '"periodSeconds":-1')
    result = run_hook(spool_dir, "restore", broken)
    assert (result.code, result.stdout) == (0, "")
    assert "watchdog left as it is, the health spec is invalid" in result.stderr


def define_persistently(spool_dir: Path, xml: str, name: str = "web1.xml") -> Path:
    config_dir = config_dir_of(spool_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / name
    # libvirt's own files start with this comment.
    path.write_text("<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n" + xml)
    return path


def test_restore_follows_the_persistent_spec_changed_after_the_save(spool_dir):
    # Saved while spec and device said poweroff; then `vmhealth apply` made it reset.
    image = (DATA / "restore-unchanged-in.xml").read_text().replace(
        'action="reset"', 'action="poweroff"')
    define_persistently(spool_dir, PLAIN, "other.xml")
    define_persistently(spool_dir, WITH_SPEC)
    result = run_hook(spool_dir, "restore", image)
    assert result.stdout == image.replace('<watchdog model="i6300esb" action="poweroff">',
                                          '<watchdog model="i6300esb" action="reset">')


def test_restore_without_a_spec_in_the_persistent_definition_changes_nothing(spool_dir):
    define_persistently(spool_dir, PLAIN.replace(PLAIN_UUID, UUID))
    source = (DATA / "restore-action-changed-in.xml").read_text()
    result = run_hook(spool_dir, "restore", source)
    assert (result.code, result.stdout) == (0, "")


def test_restore_ignores_unusable_persistent_files(spool_dir):
    config = define_persistently(spool_dir, f"not xml <uuid>{UUID}</uuid>", "broken.xml")
    # A symlink to a spec-less definition: followed, it would mean "no change".
    outside = config.parent.parent / "outside.xml"
    outside.write_text(PLAIN.replace(PLAIN_UUID, UUID))
    (config.parent / "link.xml").symlink_to(outside)
    source = (DATA / "restore-action-changed-in.xml").read_text()
    assert 'action="reset"' in run_hook(spool_dir, "restore", source).stdout


def test_filter_with_binary_streams(spool_dir):
    source = (DATA / "restore-action-changed-in.xml").read_bytes()
    result = run_hook(spool_dir, "restore", source)
    assert 'action="reset"' in result.stdout


# ---------------------------------------------------------------------------
# Other operations, arguments, limits
# ---------------------------------------------------------------------------

class Unreadable(io.StringIO):
    def read(self, *_args):
        raise AssertionError("stdin must not be read for this operation")


@pytest.mark.parametrize("op", ["start", "attach", "some-future-op"])
def test_other_operations_do_nothing(spool_dir, op):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = hook_main.main(["vmhealth", "web1", op, "begin", "-"], Unreadable(), stdout,
                          stderr, spool_dir=str(spool_dir))
    assert (code, stdout.getvalue(), stderr.getvalue()) == (0, "", "")


def test_missing_arguments_print_usage_and_pass(spool_dir):
    stderr = io.StringIO()
    assert hook_main.main(["vmhealth"], Unreadable(), io.StringIO(), stderr) == 0
    assert stderr.getvalue().startswith("usage: ")


@pytest.mark.parametrize("op", ["prepare", "started", "stopped"])
def test_the_time_limit_lets_libvirt_go_ahead(spool_dir, monkeypatch, op):
    def hang(_run):
        time.sleep(30)

    monkeypatch.setitem(hook_main.OPERATIONS, op, hang)
    result = run_hook(spool_dir, op, WITH_SPEC, time_limit=0.2)
    assert result.code == 0
    assert result.stderr == f"vmhealth: {op}: gave up after 0.2 s; libvirt goes ahead\n"


def test_a_bug_lets_libvirt_go_ahead(spool_dir, monkeypatch):
    def broken(_run):
        raise KeyError("oops")

    monkeypatch.setitem(hook_main.OPERATIONS, "prepare", broken)
    result = run_hook(spool_dir, "prepare", WITH_SPEC)
    assert result.code == 0
    assert "internal error KeyError" in result.stderr


# ---------------------------------------------------------------------------
# Hostile input: a clean exit and no file outside the spool directory
# ---------------------------------------------------------------------------

BOMB = """<?xml version="1.0"?>
<!DOCTYPE domain [
  <!ENTITY a "https://vmhealth.dev/xmlns/health/1">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
]>
<domain><name>&c;</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid></domain>
"""
EXTERNAL = WITH_SPEC.replace(
    "<domain", '<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<domain', 1
).replace("<name>web1</name>", "<name>&x;</name>")
HOSTILE = {
    "entity bomb": BOMB,
    "external entity": EXTERNAL,
    # The first 10 MiB (libvirt's limit) are read: the namespace is beyond them here...
    "50 MB name": WITH_SPEC.replace("<name>", "<name>" + "x" * (50 * 1024 * 1024), 1),
    # ...and within them here.
    "50 MB tail": WITH_SPEC.replace("</devices>", "</devices>" + " " * (50 * 1024 * 1024)),
    "garbage": "\x00\xff<<<&&& https://vmhealth.dev/xmlns/health/1 \x7f",
    "uuid with ../": WITH_SPEC.replace(UUID, "../../../../tmp/evil"),
    "uuid upper case": WITH_SPEC.replace(UUID, UUID.upper()),
    "two uuids": WITH_SPEC.replace("<name>", f"<uuid>{PLAIN_UUID}</uuid><name>"),
    "not a domain": WITH_SPEC.replace("<domain", "<network", 1).replace("</domain>",
                                                                         "</network>"),
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("op", ["prepare", "started", "reconnect", "stopped", "release",
                                "migrate", "restore"])
@pytest.mark.parametrize("domain", ["web1", "../../../etc/passwd"])
def test_hostile_input_exits_cleanly_and_stays_in_the_spool(tmp_path, spool_dir, name, op,
                                                            domain):
    before = files_under(tmp_path)
    result = run_hook(spool_dir, op, HOSTILE[name], domain=domain)
    allowed = 1 if op == "prepare" else 0
    assert result.code in (0, allowed)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    created = files_under(tmp_path) - before
    assert all(path.startswith(str(spool_dir.relative_to(tmp_path))) or
               str(spool_dir.relative_to(tmp_path)).startswith(path) for path in created)
    for path in created:
        assert "evil" not in path and "passwd" not in path


@pytest.mark.parametrize("name", ["entity bomb", "external entity", "50 MB tail"])
def test_prepare_refuses_hostile_documents_that_mention_vmhealth(spool_dir, name):
    result = run_hook(spool_dir, "prepare", HOSTILE[name])
    assert result.code == 1
    assert "cannot be read" in result.stderr


def test_a_domain_name_never_reaches_a_path(spool_dir):
    run_hook(spool_dir, "started", WITH_SPEC, domain="../../escape")
    assert os.listdir(spool_dir) == [f"{UUID}.xml"]


# ---------------------------------------------------------------------------
# The executable and the hot path's imports
# ---------------------------------------------------------------------------

def test_hooks_vmhealth_is_the_default_rendering():
    assert (REPO / "hooks" / "vmhealth").read_text() == render()
    assert os.access(REPO / "hooks" / "vmhealth", os.X_OK)


@pytest.fixture
def rendered_hook(tmp_path: Path) -> Path:
    hook = tmp_path / "vmhealth"
    hook.write_text(render(sys.executable, str(Path(vmhealth.__file__).parents[1])))
    hook.chmod(0o755)
    return hook


def exec_hook(hook: Path, spool_dir: Path, op: str, xml: str):
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", spool.SPOOL_DIR_ENV: str(spool_dir)}
    return subprocess.run([str(hook), "web1", op, "begin", "-"], input=xml.encode(),
                          capture_output=True, env=env, timeout=60, check=False)


def test_the_executable_refuses_an_invalid_spec(rendered_hook, spool_dir):
    done = exec_hook(rendered_hook, spool_dir, "prepare", invalid_spec_xml())
    assert done.returncode == 1
    assert b"its health spec is invalid" in done.stderr


def test_the_executable_hands_over_and_filters(rendered_hook, spool_dir):
    assert exec_hook(rendered_hook, spool_dir, "started", WITH_SPEC).returncode == 0
    assert (spool_dir / f"{UUID}.xml").read_text() == WITH_SPEC
    source = (DATA / "restore-action-changed-in.xml").read_text()
    done = exec_hook(rendered_hook, spool_dir, "restore", source)
    assert b'action="reset"' in done.stdout


def test_the_executable_passes_when_vmhealth_is_gone(tmp_path, spool_dir):
    system_python = "/usr/bin/python3"
    found = subprocess.run([system_python, "-I", "-c", "import vmhealth"],
                           capture_output=True, timeout=60, check=False)
    if found.returncode == 0:
        pytest.skip("vmhealth is installed for the system Python; cannot simulate removal")
    hook = tmp_path / "orphan"
    hook.write_text(render(system_python, str(tmp_path / "nothing-here")))
    hook.chmod(0o755)
    done = exec_hook(hook, spool_dir, "prepare", invalid_spec_xml())
    assert done.returncode == 0
    assert done.stderr.startswith(b"vmhealth hook: cannot import vmhealth")


IMPORT_PROBE = """
import io, sys
sys.path.insert(0, {src!r})
from vmhealth.hook.main import main
code = main(["h", "web1", {op!r}, "begin", "-"], io.BytesIO(sys.stdin.buffer.read()),
            io.BytesIO(), io.StringIO(), spool_dir={spool!r}, config_dir={config!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               ("lxml", "json", "dataclasses", "click", "yaml", "libvirt", "inspect",
                "typing", "re", "enum", "os", "xml") or m in ("vmhealth.spec",
                                                             "vmhealth.domainxml"))
print(code, heavy)
"""


@pytest.mark.parametrize("op,xml,cached", [
    ("prepare", PLAIN, False),
    ("prepare", WITH_SPEC, True),  # cached verdict: the usual case for a known spec
    ("prepare", WITH_SPEC, False),  # first check: rules and JSON, still no heavy import
    ("started", WITH_SPEC, False),
    ("stopped", WITH_SPEC, False),
    ("release", PLAIN, False),
    ("restore", PLAIN, False),
    ("restore", (DATA / "restore-action-changed-in.xml").read_text(), False),
    ("restore", WITH_SPEC, True),  # with a persistent definition to find and read
])
def test_the_hot_path_imports_nothing_heavy(tmp_path, op, xml, cached):
    spool_path = str(tmp_path / "spool")
    if cached:
        run_hook(Path(spool_path), "prepare", xml)
        (tmp_path / "qemu").mkdir()
        (tmp_path / "qemu" / "web1.xml").write_text(xml)
    probe = IMPORT_PROBE.format(src=str(Path(vmhealth.__file__).parents[1]), op=op,
                                spool=spool_path, config=str(tmp_path / "qemu"))
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], input=xml.encode(),
                          capture_output=True, timeout=60, check=True)
    assert done.stdout.decode().strip() == "0 []"
