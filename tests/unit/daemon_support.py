"""The daemon's test helpers: test-driver domains, a fake prober, running the loop
(a helper module shared by the daemon tests; no tests)."""

from __future__ import annotations

import asyncio
import time

import libvirtaio

from vmhealth.domainxml import apply_spec
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.prober import ProbeSnapshot
from vmhealth.spec import ProbeKind, parse_spec

LOOP = asyncio.new_event_loop()
libvirtaio.virEventRegisterAsyncIOImpl(loop=LOOP)

BASE = """<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory>65536</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices/>
</domain>"""
UUIDS = {"web1": "6695eb01-f6a4-8304-79aa-97f2502e1001",
         "web2": "6695eb01-f6a4-8304-79aa-97f2502e1002",
         "plain": "6695eb01-f6a4-8304-79aa-97f2502e1003"}
LIVENESS = {"livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1}}


def domain_xml(name: str, spec: dict | None) -> str:
    xml = BASE.format(name=name, uuid=UUIDS[name])
    return apply_spec(xml, parse_spec(spec)).xml if spec is not None else xml


class FakeProber:
    instances: list[FakeProber] = []

    def __init__(self, spec, access, listener, *, lanes=None) -> None:
        self.spec, self.access, self.listener, self.lanes = spec, access, listener, lanes
        self.lanes_recalled = 0
        self.started: dict | None = None
        self.stopped = False
        FakeProber.instances.append(self)

    def fold_lanes(self) -> None:
        pass

    def native_kinds(self) -> set:
        return set()

    def recall_lanes(self) -> None:
        self.lanes_recalled += 1

    def snapshot(self):
        return {kind: ProbeSnapshot(kind, kind is ProbeKind.LIVENESS,
                                    "initial", None, 0, 0, False, False)
                for kind in self.spec.probes()}

    def start(self, **options) -> None:
        self.started = options

    async def stop(self) -> None:
        self.stopped = True


def failure() -> ProbeResult:
    return ProbeResult(Outcome.FAILURE, "connection refused", 0.01, time.time())


def run(coro, timeout: float = 20.0):
    return LOOP.run_until_complete(asyncio.wait_for(coro, timeout))


async def settle(predicate, timeout: float = 10.0) -> None:
    """Let events and background tasks run until predicate() holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
