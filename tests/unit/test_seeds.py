"""Every YAML example in the KubeVirt documents (../shared/seeds) is accepted by
`vmhealth apply`, gives the spec its text describes, and `remove` undoes it."""

from __future__ import annotations

import io
import json

import libvirt
import pytest
from click.testing import CliRunner
from tests.ci import missing
from tests.seeds import seed_examples, seeds_dir

from vmhealth.cli import Context, main
from vmhealth.manifest import load_manifest
from vmhealth.spec import spec_to_dict

EXAMPLES = seed_examples()

HTTP_1500 = {"httpGet": {"port": 1500, "path": "/", "scheme": "HTTP"}}
TCP_1500 = {"tcpSocket": {"port": 1500}}
EXEC_CAT = {"exec": {"command": ["cat", "/tmp/healthy.txt"]}}


def timing(initial, period, timeout, success=1, failure=3):
    return {"initialDelaySeconds": initial, "periodSeconds": period, "timeoutSeconds": timeout,
            "successThreshold": success, "failureThreshold": failure}


# What no example sets: vmhealth's defaults, as `vmhealth show` spells them out.
DEFAULTS = {"onLivenessFailure": "restart", "runStrategy": "Manual",
            "guestAgentPingPaused": False}

# What each example's surrounding text says it configures.
EXPECTED = {
    ("000_c96ad894d0170556.txt", 1): {"livenessProbe": {**HTTP_1500, **timing(120, 20, 10)},
                                      "terminationGracePeriodSeconds": 0},
    ("000_c96ad894d0170556.txt", 2): {"livenessProbe": {**TCP_1500, **timing(120, 20, 10)},
                                      "terminationGracePeriodSeconds": 0},
    ("000_c96ad894d0170556.txt", 3): {"readinessProbe": {**HTTP_1500,
                                                         **timing(120, 20, 10, 3, 3)},
                                      "terminationGracePeriodSeconds": 0},
    ("000_c96ad894d0170556.txt", 4): {"watchdog": {"name": "mywatchdog", "model": "i6300esb",
                                                   "action": "poweroff"},
                                      "terminationGracePeriodSeconds": 0},
    ("000_c96ad894d0170556.txt", 5): {"readinessProbe": {**EXEC_CAT, **timing(20, 10, 5, 1, 10)},
                                      "terminationGracePeriodSeconds": 180},
    ("001_448b712add98aec6.txt", 1): {"readinessProbe": {**EXEC_CAT,
                                                         **timing(120, 10, 5, 1, 10)},
                                      "terminationGracePeriodSeconds": 180,
                                      "runStrategy": "Always"},
    ("002_3ac891008d57ca37.txt", 1): {"livenessProbe": {**HTTP_1500, **timing(120, 20, 10)},
                                      "terminationGracePeriodSeconds": 0},
    ("002_3ac891008d57ca37.txt", 2): {"livenessProbe": {**TCP_1500, **timing(120, 20, 10)},
                                      "terminationGracePeriodSeconds": 0},
    ("002_3ac891008d57ca37.txt", 3): {"readinessProbe": {**HTTP_1500,
                                                         **timing(120, 20, 10, 3, 3)},
                                      "terminationGracePeriodSeconds": 0},
}


def test_seeds_are_present():
    if not seeds_dir().is_dir():
        missing(f"no seed documents at {seeds_dir()} (CI puts shared/ beside the clone; "
                "elsewhere set VMHEALTH_SEEDS)")
    found = {(name, number) for name, number, _ in EXAMPLES}
    assert found == set(EXPECTED), "a seed example appeared or vanished: update EXPECTED"


@pytest.mark.parametrize(("name", "number", "text"), EXAMPLES,
                         ids=[f"{n}#{i}" for n, i, _ in EXAMPLES])
def test_seed_example_gives_described_spec(name, number, text):
    loaded = load_manifest(io.StringIO(text))
    data = spec_to_dict(loaded.spec)
    user_data = data.pop("userData")
    assert user_data.startswith("#cloud-config\n"), "the example's cloud-init data is kept"
    assert data == {**DEFAULTS, **EXPECTED[(name, number)]}
    assert loaded.warnings == (), "nothing in the KubeVirt documents' examples needs a word"


@pytest.mark.parametrize(("name", "number", "text"), EXAMPLES,
                         ids=[f"{n}#{i}" for n, i, _ in EXAMPLES])
def test_seed_example_apply_show_remove(conn, tmp_path, name, number, text):
    manifest = tmp_path / "vmi.yaml"
    manifest.write_text(text)
    dom = conn.lookupByName("web1")
    original = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    runner = CliRunner()
    ctx = Context(uri=None, conn=conn)

    applied = runner.invoke(main, ["apply", "web1", "-f", str(manifest)], obj=ctx)
    assert applied.exit_code == 0, applied.output
    assert "<metadata>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    shown = runner.invoke(main, ["show", "web1", "-o", "json"], obj=ctx)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == spec_to_dict(load_manifest(manifest).spec)

    removed = runner.invoke(main, ["remove", "web1"], obj=ctx)
    assert removed.exit_code == 0, removed.output
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == original
