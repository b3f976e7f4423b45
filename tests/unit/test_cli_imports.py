"""Every module of the package imports on its own, first, in a fresh interpreter: no
import cycle (cli.py and its command modules were one), no module that works only
because another was imported before it."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import vmhealth

PACKAGE = Path(vmhealth.__file__).resolve().parent
# The CLI modules, named so that their loss from the package would fail the test.
CLI_MODULES = {"vmhealth.cli", "vmhealth.cli_context", "vmhealth.cli_daemon",
               "vmhealth.cli_guest", "vmhealth.cli_hook"}


def package_modules() -> list[str]:
    """Every module's dotted name, found from the files (nothing is imported here)."""
    names = []
    for path in sorted(PACKAGE.rglob("*")):
        relative = path.relative_to(PACKAGE.parent)
        if "__pycache__" in relative.parts or not path.is_file():
            continue
        if path.suffix == ".py":
            parts = relative.with_suffix("").parts
        elif path.suffix == ".so":
            parts = (*relative.parent.parts, path.name.split(".")[0])
        else:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def import_alone(module: str) -> str | None:
    """None if `python -c "import MODULE"` works, else what it printed."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120, check=False)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def test_the_module_list_is_the_package():
    modules = package_modules()
    assert set(modules) >= CLI_MODULES
    assert {"vmhealth", "vmhealth.hook.main", "vmhealth.monitor.probes.http"} <= set(modules)
    assert len(modules) == len(set(modules))


def test_every_module_imports_first_in_a_fresh_interpreter():
    modules = package_modules()
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = {module: error for module, error in zip(modules, pool.map(import_alone,
                                                                             modules))
                    if error is not None}
    assert failures == {}


def test_a_module_that_cannot_import_is_reported():
    # The check itself can fail: a cycle like the one cli.py and cli_guest had.
    assert "No module named" in import_alone("vmhealth.no_such_module")


def _source(module: str) -> Path:
    base = PACKAGE.parent.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _tree(module: str) -> ast.Module:
    return ast.parse(_source(module).read_text(), str(_source(module)))


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_imports_the_root_of_the_command_line():
    """cli.py imports the command modules; nothing imports cli.py (the console script
    names it), so there is no cycle to break again."""
    importers = [module for module in package_modules()
                 if not module.endswith("_fastlane") and module != "vmhealth.cli"
                 and "vmhealth.cli" in _imported(_tree(module))]
    assert importers == []


def test_the_errors_and_exits_of_the_command_line_have_one_home():
    defined: dict[str, list[str]] = {}
    for module in sorted(CLI_MODULES):
        tree = _tree(module)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(module)
            # Exits are raised as cli_context's exceptions, never written out.
            if isinstance(node, ast.Attribute):
                assert node.attr != "exit", f"{module}:{node.lineno}: .exit()"
            if isinstance(node, ast.Name):
                assert node.id != "SystemExit", f"{module}:{node.lineno}: SystemExit"
    for name in ("Failure", "UsageFailure", "NotOk", "Context"):
        assert defined[name] == ["vmhealth.cli_context"]
    # --connect is defined once: the option's name appears in cli_context alone.
    spelled = [module for module in sorted(CLI_MODULES)
               if '"--connect"' in _source(module).read_text()]
    assert spelled == ["vmhealth.cli_context"]
