"""RPM packaging and the Python distributions (docs/packaging.md).

The RPMs are built once per session with packaging/rpm/build (on Debian with its
macros.debian), the wheels and sdist once with `python -m build`; every test then
inspects the results. Every package but the native probe lane's is noarch (pure
Python). Without rpmbuild, rpmlint or the `build` module the tests skip, except under
CI=true, where a missing tool is a failure.
"""

from __future__ import annotations

import bz2
import configparser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from tests.ci import missing as missing_tool
from tests.ci import require_tool

import vmhealth
from vmhealth.cli import main
from vmhealth.hook.launcher import render

REPO = Path(__file__).resolve().parents[2]
RPM_DIR = REPO / "packaging" / "rpm"
SPEC = RPM_DIR / "vmhealth.spec"
LANE_SPEC = RPM_DIR / "python-vmhealth-fastlane.spec"
BUILD_SCRIPT = RPM_DIR / "build"
PACKAGING_DOC = REPO / "docs" / "packaging.md"

# The Fedora/RHEL package that provides each distribution named in install_requires or
# the `host` extra (normalized names). A new dependency fails
# test_spec_requires_match_setup_cfg until it is added here and as a Requires: of
# python3-vmhealth (install_requires) or of the host package (`host`) in the spec.
FEDORA_PACKAGES = {
    "libvirt-python": "python3-libvirt",
    "lxml": "python3-lxml",
    "click": "python3-click",
    "psutil": "python3-psutil",
    "pyyaml": "python3-pyyaml",
    "inotify-simple": "python3-inotify_simple",
    "prometheus-client": "python3-prometheus_client",
    "pycdlib": "python3-pycdlib",
    "httptools": "python3-httptools",
    "aiohttp": "python3-aiohttp",
    "bcrypt": "python3-bcrypt",
}

HOOK = "/etc/libvirt/hooks/qemu.d/vmhealth"
UNIT = "/usr/lib/systemd/system/vmhealth.service"
TMPFILES = "/usr/lib/tmpfiles.d/vmhealth.conf"
CONFIG = "/etc/vmhealth/vmhealth.conf"
ALERTS = "/usr/share/vmhealth/prometheus/vmhealth-alerts.yml"
POLICY = "/usr/share/selinux/packages/targeted/vmhealth_guest.pp.bz2"
# libsepol's SEPOL_MODULE_PACKAGE_MAGIC, little-endian: the start of every .pp file.
POLICY_PACKAGE_MAGIC = (0xF97CFF8F).to_bytes(4, "little")
TIMEOUT = 300  # seconds; a build takes about ten on this machine


def require_tools(*tools: str) -> None:
    for tool in tools:
        require_tool(tool)


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, **kwargs)


def checked(argv, **kwargs) -> str:
    result = run(argv, **kwargs)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(section: str, key: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.strip() for line in config[section][key].strip().splitlines()]
    return {normalized(re.match(r"[A-Za-z0-9_.-]+", line).group(0))
            for line in lines if line and not line.startswith("#")}


def install_requires() -> set[str]:
    return _requirements("options", "install_requires")


def host_requires() -> set[str]:
    return _requirements("options.extras_require", "host")


def spec_requires(package: str) -> set[str]:
    """Names in Requires: lines of one package's preamble in vmhealth.spec."""
    headers = {"%package -n python3-%{name}": "python3-vmhealth",
               "%package guest": "vmhealth-guest"}
    current, found = "vmhealth", set()
    for line in SPEC.read_text().splitlines():
        if line.startswith("%package"):
            current = headers[line.strip()]
        elif line.startswith("%prep"):
            break
        elif current == package and line.startswith("Requires:"):
            found.add(line.split(":", 1)[1].split()[0])
    return found


def spec_field(field: str) -> str:
    match = re.search(rf"^{field}:\s*(\S+)$", SPEC.read_text(), re.MULTILINE)
    assert match, f"no {field}: in {SPEC}"
    return match.group(1)


def worktree_files() -> list[str]:
    """What git would commit now: tracked files still present, untracked not ignored."""
    listing = checked(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                       "--exclude-standard"])
    return sorted({path for path in listing.split("\0") if path and (REPO / path).exists()})


# --- the spec against the source tree (no rpmbuild needed) ---------------------------

def test_spec_version_is_the_package_version():
    assert spec_field("Version") == vmhealth.__version__


def test_spec_requires_match_setup_cfg():
    unknown = (install_requires() | host_requires()) - FEDORA_PACKAGES.keys()
    assert not unknown, (f"setup.cfg gained {sorted(unknown)}: add its Fedora package to "
                         "FEDORA_PACKAGES here and Requires: to the spec")
    assert spec_requires("python3-vmhealth") == {FEDORA_PACKAGES[name]
                                                 for name in install_requires()}
    host = spec_requires("vmhealth")
    assert {FEDORA_PACKAGES[name] for name in host_requires()} <= host
    assert not host & {FEDORA_PACKAGES[name] for name in install_requires()}, \
        "a requirement of python3-vmhealth is repeated by the host package"


def test_lane_spec_is_of_the_package_version():
    match = re.search(r"^Version:\s*(\S+)$", LANE_SPEC.read_text(), re.MULTILINE)
    assert match and match.group(1) == vmhealth.__version__


def test_bash_completion_script_is_what_click_emits():
    result = CliRunner().invoke(main, [], prog_name="vmhealth",
                                env={"_VMHEALTH_COMPLETE": "bash_source"})
    generated = checked([sys.executable, RPM_DIR / "bash_completion.py", "vmhealth"])
    assert result.output and generated == result.output


# --- the build script's refusals -------------------------------------------------------

@pytest.fixture
def bare_checkout(tmp_path):
    """A git repository holding the packaging and the version, nothing it installs."""
    require_tools("git", "rpmbuild")
    for relative in ("packaging/rpm/build", "packaging/rpm/vmhealth.spec",
                     "packaging/rpm/python-vmhealth-fastlane.spec",
                     "src/vmhealth/__init__.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, tmp_path / relative)

    def commit():
        git = ["git", "-C", tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org"]
        checked([*git, "init", "-q"])
        checked([*git, "add", "."])
        checked([*git, "commit", "-q", "-m", "bare"])
        return tmp_path

    return commit


def test_build_names_the_files_it_lacks(bare_checkout, tmp_path):
    checkout = bare_checkout()
    result = run([checkout / "packaging/rpm/build", "--outdir", tmp_path / "out"])
    assert result.returncode == 1
    assert "lacks hooks/vmhealth host/vmhealth.service" in result.stderr
    assert not (tmp_path / "out").exists()


def test_build_refuses_a_spec_of_another_version(bare_checkout, tmp_path):
    init = tmp_path / "src/vmhealth/__init__.py"
    init.write_text(init.read_text().replace(vmhealth.__version__, "9.9.9"))
    result = run([bare_checkout() / "packaging/rpm/build", "--outdir", tmp_path / "out"])
    assert result.returncode == 1
    assert f"Version: {vmhealth.__version__} but src/vmhealth/__init__.py says 9.9.9" \
        in result.stderr


# --- the RPMs ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def rpms(tmp_path_factory):
    require_tools("rpmbuild", "rpmlint", "rpm2cpio", "cpio", "git")
    out = tmp_path_factory.mktemp("rpms")
    built = checked([BUILD_SCRIPT, "--worktree", "--outdir", out]).split()
    srpms = [path for path in built
             if Path(path).name.startswith("vmhealth-") and path.endswith(".src.rpm")]
    assert len(srpms) == 1, built
    version = query(Path(srpms[0]), "--qf", "%{VERSION}-%{RELEASE}")
    assert version.startswith(f"{vmhealth.__version__}-")
    # Everything noarch but the native probe lane, the one compiled part
    # (docs/packaging.md).
    arch = checked(["rpm", "--eval", "%{_arch}"]).strip()
    names = {"srpm": f"vmhealth-{version}.src.rpm", "host": f"vmhealth-{version}.noarch.rpm",
             "python": f"python3-vmhealth-{version}.noarch.rpm",
             "guest": f"vmhealth-guest-{version}.noarch.rpm",
             "lane_srpm": f"python-vmhealth-fastlane-{version}.src.rpm",
             "lane": f"python3-vmhealth-fastlane-{version}.{arch}.rpm"}
    return SimpleNamespace(built=sorted(Path(path).name for path in built), version=version,
                           out=out, **{key: out / name for key, name in names.items()})


def query(rpm: Path, *options: str) -> str:
    return checked(["rpm", "-qp", *options, rpm])


def extract(rpm: Path, dest: Path) -> Path:
    dest.mkdir()
    with subprocess.Popen(["rpm2cpio", str(rpm)], stdout=subprocess.PIPE) as payload:
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=payload.stdout, cwd=dest,
                       check=True, timeout=TIMEOUT)
    return dest


def sitelib(files: list[str]) -> str:
    inits = [path for path in files if path.endswith("/vmhealth/__init__.py")]
    assert len(inits) == 1, inits
    return inits[0][:-len("/vmhealth/__init__.py")]


def test_build_makes_two_srpms_three_noarch_rpms_and_the_lane(rpms):
    assert rpms.built == sorted(path.name for path in (rpms.srpm, rpms.host, rpms.python,
                                                       rpms.guest, rpms.lane_srpm, rpms.lane))


def test_only_the_lane_carries_compiled_code(rpms):
    for rpm in (rpms.host, rpms.python, rpms.guest):
        assert query(rpm, "--qf", "%{ARCH}") == "noarch", rpm.name
        assert not [path for path in query(rpm, "-l").splitlines()
                    if path.endswith(".so") or "/.build-id/" in path], rpm.name
    assert query(rpms.lane, "--qf", "%{ARCH}") != "noarch"


def test_rpmlint_reports_no_errors_and_every_warning_is_documented(rpms):
    # One run per spec: rpmlint 2.4 reports "multiple-specfiles" when it is given the
    # source RPMs of two specs in one run.
    output = ""
    for group in ([rpms.srpm, rpms.host, rpms.python, rpms.guest, SPEC],
                  [rpms.lane_srpm, rpms.lane, LANE_SPEC]):
        result = run(["rpmlint", "-c", RPM_DIR / "rpmlint.toml", *group])
        assert " 0 errors," in result.stdout and result.returncode == 0, result.stdout
        output += result.stdout
    warnings = set(re.findall(r": W: (\S+)", output))
    documented = PACKAGING_DOC.read_text()
    undocumented = sorted(w for w in warnings if f"`{w}`" not in documented)
    assert not undocumented, f"document these rpmlint warnings in docs/packaging.md: {undocumented}"


def test_host_rpm_installs_hook_unit_tmpfiles_and_config(rpms):
    lines = query(rpms.host, "--qf", "[%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILENAMES}\n]")
    entries = {line.split()[-1]: line.split()[:-1] for line in lines.splitlines()}
    assert entries[HOOK][0] == "-rwxr-xr-x"
    assert entries[UNIT][0] == entries[TMPFILES][0] == "-rw-r--r--"
    assert entries[CONFIG][1] == "cn", "the config must be %config(noreplace)"
    assert entries[ALERTS][0] == "-rw-r--r--"
    assert "/usr/share/doc/vmhealth/README.md" in entries
    assert "/usr/share/licenses/vmhealth/LICENSE" in entries


def test_host_rpm_brings_the_python_package_of_the_same_build(rpms):
    requires = query(rpms.host, "--requires").splitlines()
    assert f"python3-vmhealth = {rpms.version}" in requires
    assert "libvirt-daemon-driver-qemu" in requires
    expected = {FEDORA_PACKAGES[name] for name in host_requires()}
    assert expected <= set(requires), sorted(expected - set(requires))
    assert f"python3-vmhealth-fastlane = {rpms.version}" in \
        query(rpms.host, "--recommends").splitlines()
    files = query(rpms.python, "-l").splitlines()
    lib = sitelib(files)
    for module in ("vmhealth/cli.py", "vmhealth/hook/main.py", "vmhealth/monitor/daemon.py",
                   "vmhealth/guest/setup.py", "vmhealth/monitor/native_lane.py"):
        assert f"{lib}/{module}" in files
    assert "/usr/bin/vmhealth" in files
    assert "/usr/share/bash-completion/completions/vmhealth" in files


def test_python_rpm_requires_what_a_guest_needs_and_no_more(rpms):
    requires = set(query(rpms.python, "--requires").splitlines())
    expected = {FEDORA_PACKAGES[name] for name in install_requires()}
    assert expected <= requires, sorted(expected - requires)
    host_only = {FEDORA_PACKAGES[name] for name in host_requires()}
    assert not requires & host_only, sorted(requires & host_only)


def test_lane_rpm_holds_the_extension_for_the_same_build(rpms):
    files = query(rpms.lane, "-l").splitlines()
    modules = [path for path in files if re.search(r"/vmhealth_fastlane\.[^/]*\.so$", path)]
    assert len(modules) == 1, files
    assert not [path for path in files if "/vmhealth/" in path], "vmhealth's own files"
    assert f"python3-vmhealth = {rpms.version}" in query(rpms.lane, "--requires").splitlines()


def test_host_scriptlets_reload_libvirt_and_cannot_fail(rpms):
    scripts = query(rpms.host, "--scripts")
    post = scripts.split("postinstall scriptlet")[1].split("uninstall scriptlet")[0]
    assert "for unit in virtqemud.service libvirtd.service" in post
    assert 'if /usr/bin/systemctl is-active --quiet "$unit"; then' in post
    assert '/usr/bin/systemctl reload "$unit"' in post
    # The systemd macros' text differs between Fedora releases (and macros.debian):
    # check what they act on, not how.
    assert "vmhealth.service" in post and " enable " not in post
    assert "/usr/lib/tmpfiles.d/vmhealth.conf" in post
    assert "vmhealth.service" in scripts.split("preuninstall scriptlet")[1]
    assert "vmhealth.service" in scripts.split("postuninstall scriptlet")[1]
    for line in scripts.splitlines():
        if "systemctl reload" in line:
            assert line.rstrip().endswith("|| :"), f"this could fail the transaction: {line}"


def test_packaged_hook_is_the_launcher_rendering_for_the_packaged_sitelib(rpms, tmp_path):
    lib = sitelib(query(rpms.python, "-l").splitlines())
    root = extract(rpms.host, tmp_path / "host")
    assert (root / HOOK.lstrip("/")).read_text() == render("/usr/bin/python3", lib)


def test_guest_rpm_installs_a_policy_package_with_the_selinux_scriptlets(rpms, tmp_path):
    root = extract(rpms.guest, tmp_path / "guest")
    assert bz2.decompress((root / POLICY.lstrip("/")).read_bytes())[:4] == POLICY_PACKAGE_MAGIC
    files = query(rpms.guest, "-l").splitlines()
    assert "/usr/libexec/vmhealth/probes" in files and "/var/lib/vmhealth/probes" in files
    scripts = query(rpms.guest, "--scripts")
    assert f"-i {POLICY}" in scripts.split("postinstall scriptlet")[1]
    assert "-r vmhealth_guest" in scripts.split("postuninstall scriptlet")[1]
    requires = query(rpms.guest, "--requires").splitlines()
    assert f"python3-vmhealth = {rpms.version}" in requires
    assert not any(r.startswith("libvirt-daemon") for r in requires), \
        "a guest must not pull in the libvirt daemon"


def test_srpm_carries_the_spec_and_the_source_tarball(rpms):
    files = query(rpms.srpm, "-l").split()
    assert sorted(files) == [f"vmhealth-{vmhealth.__version__}.tar.gz", "vmhealth.spec"]
    assert "- First package" in query(rpms.srpm, "--changelog")


# --- wheel and sdist -----------------------------------------------------------------

@pytest.fixture(scope="session")
def dists(tmp_path_factory):
    try:
        import build  # noqa: F401 - only whether the module is there
    except ImportError:
        missing_tool("the python `build` module is missing (pip install -e '.[test]')")
    require_tools("git")
    top = tmp_path_factory.mktemp("dists")
    source = top / "source"
    for relative in worktree_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, source / relative, follow_symlinks=False)
    checked([sys.executable, "-m", "build", "--outdir", top / "dist", source])
    # The native lane: a wheel of its own, from the same tree.
    checked([sys.executable, "-m", "build", "--wheel", "--outdir", top / "lane",
             source / "src" / "native"])
    version = vmhealth.__version__
    lanes = sorted((top / "lane").glob(f"vmhealth_fastlane-{version}-cp*.whl"))
    assert len(lanes) == 1, sorted(path.name for path in (top / "lane").iterdir())
    return SimpleNamespace(top=top, wheel=top / "dist" / f"vmhealth-{version}-py3-none-any.whl",
                           lane=lanes[0], sdist=top / "dist" / f"vmhealth-{version}.tar.gz")


@pytest.fixture(scope="session")
def fresh_venv(dists):
    venv = dists.top / "venv"
    # The distribution's interpreter, as on a host: libvirt-python and lxml come from
    # its packages (--system-site-packages), the rest from the package index.
    checked([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", "--system-site-packages",
             venv])
    checked([venv / "bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"{dists.wheel}[host]", dists.lane])
    return venv


def test_wheel_holds_every_package_file(dists):
    package = REPO / "src" / "vmhealth"
    expected = {f"vmhealth/{path.relative_to(package)}" for path in package.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"vmhealth-{vmhealth.__version__}.dist-info/entry_points.txt")
    assert expected <= names, sorted(expected - names)
    assert not [name for name in names if name.endswith(".so")], "a pure wheel has no .so"
    with zipfile.ZipFile(dists.lane) as lane:
        assert [name for name in lane.namelist() if name.endswith(".so")] == [
            name for name in lane.namelist() if name.startswith("vmhealth_fastlane.")]
    assert "vmhealth = vmhealth.cli:main" in entry_points.decode()


def test_sdist_builds_the_same_package(dists):
    prefix = f"vmhealth-{vmhealth.__version__}"
    with tarfile.open(dists.sdist) as sdist:
        names = set(sdist.getnames())
    for relative in ("LICENSE", "README.md", "setup.cfg", "setup.py", "pyproject.toml",
                     "src/vmhealth/cli.py", "src/vmhealth/hook/launcher.py"):
        assert f"{prefix}/{relative}" in names


def test_installed_wheel_runs_the_cli(fresh_venv):
    help_text = checked([fresh_venv / "bin/vmhealth", "--help"])
    assert "Commands:" in help_text and "apply" in help_text
    hook_help = checked([fresh_venv / "bin/vmhealth", "hook", "install", "--help"])
    assert "Usage: vmhealth hook install" in hook_help
    engine = checked([fresh_venv / "bin/python", "-c",
                      "from vmhealth.monitor import native_lane; print(native_lane.ENGINE)"])
    assert engine.strip() == "native"


@pytest.mark.parametrize("tag", ["PREIN", "POSTIN", "PREUN", "POSTUN", "POSTTRANS"])
def test_every_scriptlet_is_valid_shell(rpms, tag):
    for rpm in (rpms.host, rpms.guest, rpms.lane):
        body = query(rpm, "--qf", f"%{{{tag}}}")
        if body != "(none)":
            result = run(["sh", "-n"], input=body)
            assert result.returncode == 0, f"{rpm.name} {tag}: {result.stderr}"
