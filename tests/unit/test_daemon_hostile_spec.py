"""The daemon against hostile metadata, with libvirt's test driver.

A domain whose stored spec nests ten thousand levels deep, or makes adoption fail in a
way nobody foresaw, is that domain's problem: it gets a SpecInvalid event (or a log
line), and every other domain is monitored. Before, the nested spec's RecursionError
aborted reconcile and start(), and systemd restarted the daemon into the same failure.

libvirt accepts one event-loop implementation per process: these tests run on
test_daemon's loop (imported, never registered twice) with its fake prober.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.unit.daemon_support import LIVENESS, FakeProber, domain_xml, run

from vmhealth.monitor import registry as registry_module
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.daemon import Daemon

READINESS = {"readinessProbe": {"tcpSocket": {"port": 80}}}
# Deep enough for the C scanner's RecursionError (about 1000 levels), well inside the
# size bound, so it is the depth bound that must answer.
DEEP = "[" * 5000 + "]" * 5000


def with_spec_text(xml: str, text: str) -> str:
    start = xml.index("<vmhealth:spec>") + len("<vmhealth:spec>")
    return xml[:start] + text + xml[xml.index("</vmhealth:spec>"):]


def started_daemon(tmp_path: Path, *domains: str) -> Daemon:
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>\n" + "\n".join(domains) + "\n</node>\n")
    FakeProber.instances = []
    daemon = Daemon(DaemonConfig(libvirt_uri=f"test://{driver}",
                                 spool_dir=str(tmp_path / "spool")), prober_factory=FakeProber)
    run(daemon.start())
    return daemon


@pytest.fixture
def stop_after():
    daemons = []
    yield daemons.append
    for daemon in daemons:
        run(daemon.shutdown())


def test_a_deeply_nested_spec_is_invalid_and_the_others_are_monitored(tmp_path, stop_after):
    deep = with_spec_text(domain_xml("web1", LIVENESS), DEEP)
    daemon = started_daemon(tmp_path, deep, domain_xml("web2", READINESS))
    stop_after(daemon)
    assert {m.name for m in daemon.monitors.values()} == {"web2"}
    invalid = [e for e in daemon.events.recent() if e.type == "SpecInvalid"]
    assert [e.domain for e in invalid] == ["web1"]
    assert "metadata.spec: nested deeper than 32 levels" in invalid[0].message


def test_an_oversized_spec_is_invalid_and_the_others_are_monitored(tmp_path, stop_after):
    huge = with_spec_text(domain_xml("web1", LIVENESS), '"' + "x" * 70000 + '"')
    daemon = started_daemon(tmp_path, huge, domain_xml("web2", READINESS))
    stop_after(daemon)
    assert {m.name for m in daemon.monitors.values()} == {"web2"}
    invalid = [e for e in daemon.events.recent() if e.type == "SpecInvalid"]
    assert "more than the 65536 allowed" in invalid[0].message


def test_a_wrong_type_with_host_defaults_is_invalid_not_a_crash(tmp_path, stop_after):
    # Merged with a default periodSeconds, a string timeoutSeconds used to raise a
    # TypeError (str > int) before any rule could name the field.
    xml = domain_xml("web1", LIVENESS).replace(',"periodSeconds":1', "").replace(
        '"timeoutSeconds":1', '"timeoutSeconds":"3"')
    driver = tmp_path / "driver.xml"
    driver.write_text(f"<node>{xml}{domain_xml('web2', READINESS)}</node>")
    config = DaemonConfig(libvirt_uri=f"test://{driver}", spool_dir=str(tmp_path / "spool"),
                          spec_defaults={"periodSeconds": 5})
    daemon = Daemon(config, prober_factory=FakeProber)
    run(daemon.start())
    stop_after(daemon)
    assert {m.name for m in daemon.monitors.values()} == {"web2"}
    invalid = [e for e in daemon.events.recent() if e.type == "SpecInvalid"]
    assert "livenessProbe.timeoutSeconds: must be an integer" in invalid[0].message


def test_reconcile_survives_any_one_domains_exception(tmp_path, stop_after, monkeypatch,
                                                       caplog):
    real_domain_spec = registry_module.domain_spec

    def broken_for_web1(dom, defaults=None):
        if dom.name() == "web1":
            raise RuntimeError("something nobody foresaw")
        return real_domain_spec(dom, defaults)

    monkeypatch.setattr(registry_module, "domain_spec", broken_for_web1)
    with caplog.at_level(logging.ERROR, logger="vmhealth.daemon"):
        daemon = started_daemon(tmp_path, domain_xml("web1", LIVENESS),
                                domain_xml("web2", READINESS))
    stop_after(daemon)
    assert {m.name for m in daemon.monitors.values()} == {"web2"}
    failures = [r for r in caplog.records if r.getMessage().startswith("cannot adopt domain")]
    assert len(failures) == 1
    fields = failures[0].vmhealth_fields
    assert fields["domain"] == "web1"
    assert fields["error"] == "RuntimeError: something nobody foresaw"
    # The next reconcile (a reconnect, say) goes through again, and still adopts web2.
    run(daemon.registry.reconcile())
    assert {m.name for m in daemon.monitors.values()} == {"web2"}
