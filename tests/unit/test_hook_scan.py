"""The hook's lean XML reader and its byte-level watchdog edit."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from vmhealth import domainxml, xmlsafe
from vmhealth.hook.scan import (
    MAX_XML_BYTES,
    NAMESPACE,
    ScanError,
    canonical_uuid,
    is_canonical_uuid,
    scan,
)
from vmhealth.hook.watchdog import align
from vmhealth.spec import parse_spec

UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


def domain(devices: str = "", metadata: str = "", extra: str = "") -> bytes:
    return (f"<domain type='kvm'><name>d</name><uuid>{UUID}</uuid>{extra}"
            f"<metadata>{metadata}</metadata><devices>{devices}</devices></domain>").encode()


def health(prefix: str = "vmhealth", spec: str = '{"watchdog":{"action":"pause"}}') -> str:
    colon = f"{prefix}:" if prefix else ""
    declaration = f"xmlns:{prefix}" if prefix else "xmlns"
    return (f"<{colon}health {declaration}='{NAMESPACE}' version='1'><spec>{spec}</spec>"
            f"</{colon}health>")


def test_constants_match_the_modules_the_hook_avoids_importing():
    assert NAMESPACE == domainxml.NAMESPACE
    assert MAX_XML_BYTES == xmlsafe.MAX_XML_BYTES


def test_scan_reads_what_domainxml_reads():
    source = domainxml.apply_spec(
        domain("<watchdog model='ib700' action='reset'/>").decode(),
        parse_spec({"watchdog": {"model": "ib700", "action": "poweroff"}})).xml.encode()
    facts = scan(source)
    assert facts.uuid == UUID
    assert facts.health_version == domainxml.FORMAT_VERSION
    assert parse_spec(json.loads(facts.spec_text), "metadata.spec") == \
        domainxml.read_spec(source)
    assert [(dev.model, dev.action) for dev in facts.watchdogs] == [("ib700", "poweroff")]


@pytest.mark.parametrize("prefix", ["vmhealth", "vh", ""])
def test_scan_follows_the_namespace_not_the_prefix(prefix):
    source = domain(metadata=health(prefix))
    facts = scan(source)
    assert facts.has_health
    # With a default namespace <spec> is in our namespace too, which is how vmhealth
    # and libvirt's setMetadata write it: found either way, by both readers.
    assert facts.spec_text == '{"watchdog":{"action":"pause"}}'
    assert domainxml.read_spec(source) is not None


def test_scan_ignores_look_alikes_in_other_places():
    other = "<app:x xmlns:app='urn:other'><uuid>11111111-1111-1111-1111-111111111111</uuid>" \
            f"<health xmlns='{NAMESPACE}' version='9'/></app:x>"
    facts = scan(domain(metadata=other, devices="<disk><watchdog model='x'/></disk>"))
    assert facts.uuid == UUID
    assert not facts.has_health
    assert facts.watchdogs == []


@pytest.mark.parametrize("source,message", [
    (b"<network/>", "not a libvirt <domain>"),
    (b"<domain xmlns='urn:x'/>", "not a libvirt <domain>"),
    (b"<!DOCTYPE domain><domain/>", "DOCTYPE"),
    (b"<?xml version='1.0' encoding='ISO-8859-1'?><domain/>", "only UTF-8"),
    (b"<domain>", "not well-formed"),
    (b"", "not well-formed"),
    (domain(extra="<uuid>x</uuid>"), "more than one <uuid>"),
    (domain(metadata=health() + health("vh")), "more than one vmhealth:health"),
    (b" " * (MAX_XML_BYTES + 1), "larger than"),
])
def test_scan_refuses(source, message):
    with pytest.raises(ScanError, match=message):
        scan(source)


@pytest.mark.parametrize("text,ok", [
    (UUID, True),
    (UUID.upper(), False),
    ("6695eb01f6a4830479aa97f2502e193f", False),
    ("6695eb01-f6a4-8304-79aa-97f2502e193g", False),
    ("../../6695eb01-f6a4-8304-79aa-97f2502e", False),
    ("6695eb01-f6a4-8304-79aa-97f2502e19/f", False),
    ("", False),
    (None, False),
])
def test_canonical_uuid(text, ok):
    assert is_canonical_uuid(text) is ok


def test_canonical_uuid_names_the_problem():
    with pytest.raises(ScanError, match=r"not a canonical UUID \('\.\./x'\)"):
        canonical_uuid(scan(domain().replace(UUID.encode(), b"../x")))


TAGS = [
    "<watchdog model='i6300esb' action='poweroff'/>",
    '<watchdog model="i6300esb" action="poweroff" />',
    "<watchdog\n   action = 'poweroff'\tmodel='i6300esb'>\n<alias name='w'/></watchdog>",
    "<watchdog model='i6300esb' note='a>b action=\"x\"' action='poweroff'/>",
    "<watchdog model='i6300esb'/>",
    "<watchdog model=\"i6300esb\"></watchdog>",
    "<watchdog/>",
]


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("action", ["pause", "inject-nmi", "reset"])
def test_align_edits_only_the_action(tag, action):
    source = domain(devices="<disk/>" + tag + "<memballoon model='none'/>")
    facts = scan(source)
    assert source[facts.watchdogs[0].offset:].startswith(b"<watchdog")
    result = align(source, facts, "i6300esb", action)
    before = etree.fromstring(source)
    if result.xml is None:
        assert facts.watchdogs[0].effective_action == action
        return
    after = etree.fromstring(result.xml)
    assert after.find("devices/watchdog").get("action") == action
    # Everything else is as it was: attributes, children, siblings.
    after.find("devices/watchdog").set("action", before.find("devices/watchdog")
                                       .get("action", "REMOVED"))
    if before.find("devices/watchdog").get("action") is None:
        del after.find("devices/watchdog").attrib["action"]
    assert etree.tostring(after) == etree.tostring(before)


def test_align_reports_a_missing_model_and_changes_nothing_else():
    source = domain(devices="<watchdog model='ib700' action='reset'/>")
    result = align(source, scan(source), "i6300esb", "reset")
    assert (result.xml, result.changes, result.missing_model) == (None, (), "i6300esb")
