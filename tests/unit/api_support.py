"""The daemon's API served from a thread with a fake status source: a helper module
shared by tests/unit/test_api.py and tests/integration/test_api_root.py (no tests)."""

from __future__ import annotations

import asyncio
import threading
import time

from vmhealth.monitor.api import ApiServer
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.metrics import Metrics
from vmhealth.spec import ProbeKind

READY = {"name": "web1", "uuid": "u-1", "state": "running", "suppressed": None,
         "ready": True, "live": True, "probes": {}}
NOT_READY = {"name": "web2", "uuid": "u-2", "state": "paused", "suppressed": "paused by the user",
             "ready": False, "notReadyReason": "domain paused by the user", "live": True,
             "probes": {"readiness": {"healthy": False, "reason": "connection refused",
                                      "since": 0}}}


class FakeSource:
    def __init__(self) -> None:
        self.events = EventLog(10)
        self.metrics = Metrics()
        self.domains = {"web1": READY, "web2": NOT_READY}
        self.probed: list[tuple[str, ProbeKind]] = []

    def status(self):
        return {"libvirtConnected": True, "domains": list(self.domains.values())}

    def domain_status(self, key):
        return self.domains[key]

    async def run_probe_once(self, key, kind):
        self.probed.append((key, kind))
        if self.hold is not None:
            await self.hold.wait()
        return ProbeResult(Outcome.FAILURE, self.message, 0.5, time.time())

    hold: asyncio.Event | None = None  # set: probes wait for it
    message = "exit code 1"


class Server:
    """The API served from a loop in a thread, so the blocking client can call it."""

    def __init__(self, socket_path: str, **options) -> None:
        self.source = FakeSource()
        self.loop = asyncio.new_event_loop()
        self.api = ApiServer(self.source, socket_path, **options)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.api.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def record(self, *args, **fields):
        async def record():
            self.source.events.record(*args, **fields)
        self.call(record())

    def close(self) -> None:
        async def end_streams():  # the daemon ends event streams before the API stops
            self.source.events.close()
        self.call(end_streams())
        self.call(self.api.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
