"""Domain XML edits: golden files, idempotence, exact undo, libvirt acceptance, hostile XML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import libvirt
import pytest
from lxml import etree
from tests.golden import check_golden

from vmhealth.domainxml import (
    NAMESPACE,
    apply_spec,
    health_element,
    is_applied,
    normalise,
    read_spec,
    read_spec_data_from_root,
    remove_spec,
)
from vmhealth.manifest import load_manifest
from vmhealth.metadata import MAX_SPEC_CHARS
from vmhealth.spec import (
    HealthSpec,
    Watchdog,
    WatchdogAction,
    WatchdogModel,
    parse_spec,
    spec_to_dict,
)
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
# The undo record's action: every libvirt action as the original
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


# ---------------------------------------------------------------------------
# What mutation testing found unchecked (docs/testing.md)
# ---------------------------------------------------------------------------

def test_remove_gives_back_the_original_byte_for_byte(case):
    # Whitespace included (canonical() above ignores it): indentation, tails, an empty
    # <metadata/> or <devices/> that was there before.
    _name, source, spec = case
    assert remove_spec(apply_spec(source, spec).xml).xml == normalise(source)


def test_changes_name_every_step_exactly():
    source = two_watchdogs("shutdown").replace(
        "<watchdog model='ib700' action='shutdown'/>",
        "<watchdog model='ib700' action='dump'/>")
    edit = apply_spec(source, HealthSpec(watchdog=Watchdog(action=WatchdogAction.DUMP)))
    assert edit.devices_changed is True
    assert edit.changes == [
        f"stored the health spec in <metadata> (namespace {NAMESPACE})",
        "changed the i6300esb watchdog's action from shutdown to dump",
    ]  # the ib700 already said dump: the loop goes on to the next device
    removed = remove_spec(edit.xml)
    assert (removed.changes, removed.devices_changed) == (
        ["removed the health spec from <metadata>",
         "restored the i6300esb watchdog's action to shutdown"], True)
    added = apply_spec(XML_DIR.joinpath("plain-in.xml").read_text(), HealthSpec(
        watchdog=Watchdog()))
    assert remove_spec(added.xml).changes[1:] == [
        "removed the i6300esb watchdog vmhealth had added"]
    assert remove_spec(added.xml).devices_changed is True
    probes_only = apply_spec(source, parse_spec({"readinessProbe": {"tcpSocket": {
        "port": 1}}}))
    assert probes_only.devices_changed is False
    assert remove_spec(probes_only.xml).devices_changed is False


def test_reset_over_no_attribute_adds_none():
    edit = apply_spec(two_watchdogs(None), HealthSpec(watchdog=Watchdog()))
    assert watchdog_actions(edit.xml) == {"ib700": None, "i6300esb": None}
    assert edit.changes[1:] == []
    restored = remove_spec(edit.xml)
    assert restored.changes[1:] == [] and restored.devices_changed is False


def test_restoring_no_attribute_twice_is_harmless():
    # The attribute removed by hand after apply: remove still succeeds.
    edit = apply_spec(two_watchdogs(None), HealthSpec(watchdog=Watchdog(
        action=WatchdogAction.PAUSE)))
    by_hand = edit.xml.replace(' action="pause"', "")
    assert watchdog_actions(remove_spec(by_hand).xml) == {"ib700": None, "i6300esb": None}


def test_a_watchdog_without_a_model_is_restored_too():
    # libvirt always writes a model; a hand-written definition may not.
    source = (XML_DIR / "plain-in.xml").read_text().replace(
        "  </devices>", "    <watchdog action='pause'/>\n  </devices>")
    edit = apply_spec(source, HealthSpec(watchdog=Watchdog(action=WatchdogAction.NONE)))
    assert "changed the  watchdog's action from pause to none" in edit.changes[2]
    assert remove_spec(edit.xml).xml == normalise(source)
    with pytest.raises(XmlError, match=r"^the domain already has a \? watchdog and this "
                                       r"libvirt allows only one .* set watchdog.model: \? "
                                       r"in the spec, or remove that device with `virsh "
                                       r"edit`$"):
        apply_spec(source, HealthSpec(watchdog=Watchdog()), allow_multiple_watchdogs=False)


def test_remove_without_our_metadata_is_none():
    assert remove_spec((XML_DIR / "plain-in.xml").read_text()) is None


def test_metadata_without_a_spec_element_is_reported():
    xml = (f'<domain><name>x</name><metadata><v:health xmlns:v="{NAMESPACE}" version="1"/>'
           "</metadata></domain>")
    with pytest.raises(XmlError, match="^vmhealth metadata has no <spec> element$"):
        read_spec(xml)
    with pytest.raises(XmlError, match="^no vmhealth metadata in the document$"):
        health_element("<domain><name>x</name></domain>")


@pytest.mark.parametrize(("document", "after"), [
    ("<domain type='test'><name>n</name><memory>1</memory></domain>", "name"),
    ("<domain type='test'><memory>1</memory></domain>", "memory"),  # appended at the end
    ("<domain type='test'><name>n</name><title>t</title><memory>1</memory></domain>",
     "title"),
])
def test_new_metadata_goes_where_libvirt_writes_it(document, after):
    edit = apply_spec(document, parse_spec({"readinessProbe": {"tcpSocket": {"port": 1}}}))
    root = etree.fromstring(edit.xml.encode())
    assert root.find("metadata").getprevious().tag == after
    assert canonical(remove_spec(edit.xml).xml) == canonical(document)


def test_metadata_after_a_last_element_keeps_the_closing_indentation():
    source = "<domain type='test'>\n  <memory>1</memory>\n  <uuid>u</uuid>\n</domain>"
    xml = apply_spec(source, parse_spec({"readinessProbe": {"tcpSocket": {"port": 1}}})).xml
    assert xml.endswith("  </metadata>\n</domain>")


@pytest.mark.parametrize(("model", "machine", "arch", "refusal"), [
    ("itco", "pc-q35-8.0", "x86_64", None),
    ("itco", None, "x86_64", None),  # no machine given: libvirt decides
    ("itco", "pc-i440fx-7.2", "x86_64",
     "watchdog model itco needs a q35 machine; this domain's machine is 'pc-i440fx-7.2' "
     "(use i6300esb)"),
    ("diag288", "s390-ccw-virtio", "s390x", None),
    ("diag288", "pc", "x86_64",
     "watchdog model diag288 exists only on s390x; this domain is x86_64 (use i6300esb)"),
    ("diag288", "pc", None, None),
    ("ib700", "pc", "i686", None),
    ("ib700", "virt", "aarch64",
     "watchdog model ib700 is an ISA device for x86; this domain is aarch64"),
    ("i6300esb", "virt", "aarch64", None),
])
def test_watchdog_models_fit_the_machine(model, machine, arch, refusal):
    attributes = "".join(f" {name}='{value}'" for name, value in
                         (("arch", arch), ("machine", machine)) if value is not None)
    source = (f"<domain type='test'><name>m</name><os><type{attributes}>hvm</type></os>"
              "<devices/></domain>")
    spec = HealthSpec(watchdog=Watchdog(model=WatchdogModel(model)))
    if refusal is None:
        assert 'action="reset"' in apply_spec(source, spec).xml
    else:
        with pytest.raises(XmlError, match=f"^{re.escape(refusal)}$"):
            apply_spec(source, spec)
    # Without <os><type> at all nothing is known, and nothing is refused.
    assert apply_spec("<domain><name>m</name></domain>", spec).devices_changed


def test_a_spec_exactly_at_the_size_bound_is_stored():
    source = (XML_DIR / "plain-in.xml").read_text()

    def spec_of(length: int):
        return parse_spec({"livenessProbe": {"exec": {"command": ["x" * length]}}})

    base = len(json.dumps(spec_to_dict(spec_of(1)), sort_keys=True, separators=(",", ":"))) - 1
    fits = spec_of(MAX_SPEC_CHARS - base)
    assert read_spec(apply_spec(source, fits).xml) == fits
    with pytest.raises(XmlError, match=r"^the spec is 65537 characters as JSON, more than "
                                       r"the 65536 vmhealth stores in a domain's metadata "
                                       r"\(shorten the exec commands or HTTP headers\)$"):
        apply_spec(source, spec_of(MAX_SPEC_CHARS - base + 1))


@pytest.mark.parametrize("spec", [
    HealthSpec(watchdog=Watchdog(action=WatchdogAction.PAUSE)),
    parse_spec({"readinessProbe": {"tcpSocket": {"port": 1}}}),
])
def test_is_applied_after_apply_and_not_before(spec):
    source = two_watchdogs("reset")
    applied = apply_spec(source, spec).xml
    assert is_applied(applied, spec)
    assert not is_applied(source, spec)
    other = HealthSpec(watchdog=Watchdog(action=WatchdogAction.DUMP))
    assert not is_applied(applied, other)


def test_is_applied_checks_the_devices_too():
    spec = HealthSpec(watchdog=Watchdog(action=WatchdogAction.PAUSE))
    applied = apply_spec(two_watchdogs("reset"), spec).xml
    # The stored spec matches but a device was changed behind vmhealth's back...
    assert not is_applied(applied.replace('<watchdog model="ib700" action="pause"/>',
                                          '<watchdog model="ib700" action="reset"/>'), spec)
    # ...or the spec's model is gone.
    assert not is_applied(applied.replace('model="i6300esb" action="pause"',
                                          'model="ib700" action="pause"'), spec)
    assert not is_applied(applied.replace("version=\"1\"", "version=\"7\""), spec)


def test_remove_after_the_definition_lost_its_whitespace():
    # Another tool (or libvirt) reformatted the definition without whitespace.
    source = (XML_DIR / "plain-in.xml").read_text()
    applied = apply_spec(source, load_manifest(XML_DIR / "plain.spec.yaml").spec).xml
    compact = etree.tostring(etree.fromstring(
        applied.encode(), etree.XMLParser(remove_blank_text=True))).decode()
    assert canonical(remove_spec(compact).xml) == canonical(source)


def test_remove_keeps_the_indentation_of_metadata_added_after_ours():
    source = (XML_DIR / "plain-in.xml").read_text()
    applied = apply_spec(source, load_manifest(XML_DIR / "plain.spec.yaml").spec).xml
    later = applied.replace("    </vmhealth:health>\n", "    </vmhealth:health>\n    <app:owner "
                            'xmlns:app="https://example.org/app/1">ops</app:owner>\n')
    assert '  <metadata>\n    <app:owner xmlns:app="https://example.org/app/1">ops' \
           "</app:owner>\n  </metadata>\n" in remove_spec(later).xml


@pytest.mark.parametrize(("indent", "level"), [("", ""), ("\t", "\n"), ("    ", "\n")])
def test_a_new_watchdog_follows_the_devices_indentation(indent, level):
    inner, outer = f"{level}{indent * 2}", f"{level}{indent}"
    source = (f"<domain type='test'>{outer}<name>n</name>{outer}<devices>{inner}<disk "
              f"type='file'/>{outer}</devices>{level}</domain>")
    xml = apply_spec(source, HealthSpec(watchdog=Watchdog())).xml
    if indent:
        expected = (f'<disk type="file"/>{inner}<watchdog model="i6300esb" action="reset"/>'
                    f"{outer}</devices>")
    else:  # none of its own: libvirt's two spaces a level
        expected = ('<disk type="file"/>\n    <watchdog model="i6300esb" action="reset"/>\n'
                    "  </devices>")
    assert expected in xml
    removed = remove_spec(xml).xml
    # Byte for byte where the document is indented; a compact one keeps the newline
    # written before the removed watchdog (remove restores content, not the absence
    # of whitespace).
    assert removed == normalise(source) if indent else canonical(removed) == canonical(source)


def test_text_after_the_anchor_survives_apply_and_remove():
    source = "<domain type='test'><name>n</name>kept<memory>1</memory></domain>"
    xml = apply_spec(source, parse_spec({"readinessProbe": {"tcpSocket": {"port": 1}}})).xml
    assert "</metadata>kept<memory>" in xml
    assert remove_spec(xml).xml == normalise(source)


def test_removing_a_no_attribute_original_is_reported_as_reset():
    edit = apply_spec(two_watchdogs(None), HealthSpec(watchdog=Watchdog(
        action=WatchdogAction.POWEROFF)))
    assert remove_spec(edit.xml).changes[1:] == [  # last change first
        "restored the i6300esb watchdog's action to reset",
        "restored the ib700 watchdog's action to reset"]


def test_is_applied_reads_no_attribute_as_reset():
    spec = HealthSpec(watchdog=Watchdog())
    applied = apply_spec(two_watchdogs(None), spec).xml
    assert 'action="reset"' not in applied
    assert is_applied(applied, spec)


def test_the_stored_data_reads_back_unvalidated():
    source = (XML_DIR / "plain-in.xml").read_text()
    assert read_spec_data_from_root(etree.fromstring(source.encode())) is None
    applied = apply_spec(source, load_manifest(XML_DIR / "plain.spec.yaml").spec).xml
    broken = applied.replace('"port":22', '"port":0')
    data = read_spec_data_from_root(etree.fromstring(broken.encode()))
    assert data["livenessProbe"]["tcpSocket"] == {"port": 0}
    with pytest.raises(XmlError, match="version '7'"):
        read_spec_data_from_root(etree.fromstring(broken.replace(
            'version="1"', 'version="7"').encode()))
