"""Domain XML edits: golden files, idempotence, exact undo, libvirt acceptance, hostile XML."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from lxml import etree
from tests.golden import check_golden

from vmhealth.domainxml import NAMESPACE, apply_spec, health_element, read_spec, remove_spec
from vmhealth.manifest import load_manifest
from vmhealth.spec import HealthSpec, Watchdog, WatchdogAction, WatchdogModel, parse_spec
from vmhealth.xmlsafe import MAX_XML_BYTES, XmlError

XML_DIR = Path(__file__).resolve().parent.parent / "data" / "xml"
CASES = sorted(p.name[: -len("-in.xml")] for p in XML_DIR.glob("*-in.xml"))


def canonical(xml: str) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    return etree.tostring(etree.fromstring(xml.encode(), parser), method="c14n")


@pytest.fixture(params=CASES)
def case(request):
    name = request.param
    source = (XML_DIR / f"{name}-in.xml").read_text()
    spec = load_manifest(XML_DIR / f"{name}.spec.yaml").spec
    return name, source, spec


def test_cases_exist():
    assert len(CASES) >= 5


def test_apply_matches_golden(case):
    name, source, spec = case
    check_golden(XML_DIR / f"{name}-out.xml", apply_spec(source, spec).xml + "\n")


def test_apply_twice_is_identical(case):
    _name, source, spec = case
    once = apply_spec(source, spec).xml
    assert apply_spec(once, spec).xml == once


def test_remove_gives_back_the_original(case):
    _name, source, spec = case
    applied = apply_spec(source, spec).xml
    assert canonical(remove_spec(applied).xml) == canonical(source)


def test_spec_reads_back(case):
    _name, source, spec = case
    assert read_spec(apply_spec(source, spec).xml) == spec


def test_libvirt_accepts_the_result(case, tmp_path):
    """libvirt itself parses and keeps what we produce (test driver; the e2e suite checks
    the QEMU driver)."""
    name, source, spec = case
    if name == "ib700" and libvirt.getVersion() < 9_001_000:
        pytest.skip("two watchdogs need libvirt >= 9.1; test_single_watchdog_libvirt covers it")
    driver = tmp_path / "empty.xml"
    driver.write_text("<node/>")
    conn = libvirt.open(f"test://{driver}")
    try:
        dom = conn.defineXML(apply_spec(source, spec).xml)
        assert read_spec(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == spec
    finally:
        conn.close()


def test_reapply_with_another_spec_undoes_the_first():
    source = (XML_DIR / "ib700-in.xml").read_text()
    first = apply_spec(source, load_manifest(XML_DIR / "ib700.spec.yaml").spec).xml
    second = apply_spec(first, load_manifest(XML_DIR / "plain.spec.yaml").spec)
    root = etree.fromstring(second.xml.encode())
    actions = {w.get("model"): w.get("action") for w in root.iter("watchdog")}
    assert actions == {"ib700": "poweroff", "i6300esb": "poweroff"}
    assert canonical(remove_spec(second.xml).xml) == canonical(source)


def test_changes_are_reported():
    source = (XML_DIR / "ib700-in.xml").read_text()
    edit = apply_spec(source, load_manifest(XML_DIR / "ib700.spec.yaml").spec)
    assert edit.devices_changed
    assert edit.changes[1:] == [
        "added a i6300esb watchdog with action pause",
        "changed the ib700 watchdog's action from reset to pause (libvirt requires every "
        "watchdog of a domain to share one action)",
    ]


def test_single_watchdog_libvirt_refuses_a_second_model():
    source = (XML_DIR / "ib700-in.xml").read_text()
    spec = load_manifest(XML_DIR / "ib700.spec.yaml").spec
    with pytest.raises(XmlError, match="already has a ib700 watchdog .* set watchdog.model: "
                                       "ib700"):
        apply_spec(source, spec, allow_multiple_watchdogs=False)
    same_model = HealthSpec(watchdog=Watchdog(model=WatchdogModel.IB700))
    assert 'action="reset"' in apply_spec(source, same_model,
                                         allow_multiple_watchdogs=False).xml


def test_probe_only_spec_changes_no_device():
    source = (XML_DIR / "other-metadata-in.xml").read_text()
    edit = apply_spec(source, load_manifest(XML_DIR / "other-metadata.spec.yaml").spec)
    assert not edit.devices_changed
    assert "https://example.org/app/1" in edit.xml and "<owner>ops</owner>" in edit.xml


def test_itco_needs_q35():
    source = (XML_DIR / "plain-in.xml").read_text()
    spec = HealthSpec(watchdog=Watchdog(model=WatchdogModel.ITCO))
    with pytest.raises(XmlError, match="itco needs a q35 machine"):
        apply_spec(source, spec)


def test_health_element_is_namespace_free_for_set_metadata():
    source = (XML_DIR / "plain-in.xml").read_text()
    element = health_element(apply_spec(source, load_manifest(
        XML_DIR / "plain.spec.yaml").spec).xml)
    assert element.startswith("<health version=\"1\">") and NAMESPACE not in element


@pytest.mark.parametrize(("document", "message"), [
    ('<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     "<domain><name>&x;</name></domain>", "DOCTYPE"),
    ('<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><domain><name>&c;</name></domain>',
     "DOCTYPE|entity"),
    ("<domain><name>x</name>", "not well-formed"),
    ("\x00\x01garbage", "not well-formed"),
    ("<notadomain/>", "expected a libvirt <domain> document"),
    ("", "not well-formed"),
])
def test_hostile_xml_is_refused(document, message):
    with pytest.raises(XmlError, match=message):
        read_spec(document)


def test_huge_document_is_refused():
    huge = "<domain><name>x</name><description>" + "a" * MAX_XML_BYTES + \
           "</description></domain>"
    with pytest.raises(XmlError, match="above the"):
        read_spec(huge)


def test_broken_metadata_is_reported():
    xml = (f'<domain><name>x</name><metadata><v:health xmlns:v="{NAMESPACE}" version="1">'
           "<spec>{not json</spec></v:health></metadata></domain>")
    with pytest.raises(XmlError, match="not valid JSON"):
        read_spec(xml)
    future = xml.replace('version="1"', 'version="7"')
    with pytest.raises(XmlError, match="version '7'"):
        read_spec(future)


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 5000 + "]" * 5000, "metadata.spec: nested deeper than 32 levels"),
    ('"' + "x" * 70000 + '"', "metadata.spec: 70002 characters long, more than the 65536"),
])
def test_metadata_beyond_the_json_bounds_is_reported(text, message):
    xml = (f'<domain><name>x</name><metadata><v:health xmlns:v="{NAMESPACE}" version="1">'
           f"<spec>{text}</spec></v:health></metadata></domain>")
    with pytest.raises(XmlError, match=message):
        read_spec(xml)


def test_apply_refuses_a_spec_too_long_to_store():
    source = (XML_DIR / "plain-in.xml").read_text()
    spec = parse_spec({"livenessProbe": {"exec": {"command": ["echo", "x" * 70000]}}})
    with pytest.raises(XmlError, match=r"the spec is \d+ characters as JSON, more than the "
                                       "65536 vmhealth stores"):
        apply_spec(source, spec)


# ---------------------------------------------------------------------------
# The undo record's action: every libvirt action as the original (issue 22)
# ---------------------------------------------------------------------------

# Every action libvirt knows for a watchdog; None: no attribute (libvirt reads reset).
ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")


def two_watchdogs(original: str | None) -> str:
    action = "" if original is None else f" action='{original}'"
    return (XML_DIR / "plain-in.xml").read_text().replace(
        "  </devices>", f"    <watchdog model='ib700'{action}/>\n"
                        f"    <watchdog model='i6300esb'{action}>\n"
                        "      <alias name='watchdog1'/>\n    </watchdog>\n  </devices>")


def watchdog_actions(xml: str) -> dict[str, str | None]:
    return {w.get("model"): w.get("action") for w in etree.fromstring(xml.encode())
            .iter("watchdog")}


@pytest.mark.parametrize("original", (*ACTIONS, None))
@pytest.mark.parametrize("wanted", ACTIONS)
def test_remove_gives_back_every_original_action(original, wanted):
    source = two_watchdogs(original)
    edit = apply_spec(source, HealthSpec(watchdog=Watchdog(action=WatchdogAction(wanted))))
    # In effect: a watchdog without the attribute that should reset is left alone.
    assert {model: action or "reset" for model, action in watchdog_actions(edit.xml)
            .items()} == {"ib700": wanted, "i6300esb": wanted}
    if (original or "reset") != wanted:
        assert edit.changes[1] == (f"changed the ib700 watchdog's action from "
                                   f"{original or 'reset'} to {wanted} (libvirt requires "
                                   "every watchdog of a domain to share one action)")
    removed = remove_spec(edit.xml).xml
    assert watchdog_actions(removed) == {"ib700": original, "i6300esb": original}
    assert canonical(removed) == canonical(source)


@pytest.mark.parametrize("original", (*ACTIONS, None))
def test_reapply_starts_from_the_original_action(original):
    # Re-applying undoes first: the second spec's record names the true original,
    # not the first spec's action.
    source = two_watchdogs(original)
    first = apply_spec(source, HealthSpec(watchdog=Watchdog(action=WatchdogAction.DUMP)))
    second = apply_spec(first.xml, HealthSpec(watchdog=Watchdog(
        action=WatchdogAction.INJECT_NMI)))
    assert watchdog_actions(second.xml) == {"ib700": "inject-nmi", "i6300esb": "inject-nmi"}
    assert canonical(remove_spec(second.xml).xml) == canonical(source)


def test_undo_restores_each_watchdog_once():
    # One undo record per changed watchdog; each used to restore every watchdog of its
    # model again (10,000 watchdogs: 100 million restores). Counted, not timed.
    count = 2000
    source = (XML_DIR / "plain-in.xml").read_text().replace(
        "  </devices>", "    <watchdog model='i6300esb' action='pause'/>\n" * count
        + "  </devices>")
    applied = apply_spec(source, HealthSpec(watchdog=Watchdog()))
    assert len(applied.changes) == 1 + count
    removed = remove_spec(applied.xml)
    assert removed.changes[1:] == ["restored the i6300esb watchdog's action to pause"] * count
    assert canonical(removed.xml) == canonical(source)
