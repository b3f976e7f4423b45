"""The callback-driven runs of network probes (probes/common.NetworkRun) and their starters.

What the prober relies on: on_done is called exactly once, never before the starter
returns and never after cancel; a run leaves no reference cycle behind (at 2,000
probes a second those would keep the cyclic garbage collector busy).
"""

from __future__ import annotations

import asyncio
import gc
import socket

from tests.unit.dial_support import how_it_ended, listener
from tests.unit.probe_support import FakeAccess, Route, probe_of, start_http

from vmhealth import spec
from vmhealth.monitor import coarse_timers
from vmhealth.monitor.probes import run_probe, starter_for

WAIT = 10.0  # the most any awaited condition may take on a loaded machine


def test_an_immediate_end_is_delivered_after_the_starter_returns():
    async def scenario():
        results = []
        starter = starter_for(probe_of(spec.TcpSocket(port=22)))
        starter(FakeAccess(addrs=[]), results.append)  # no address: ends at once
        seen_at_return = list(results)
        await asyncio.sleep(0)
        return seen_at_return, results

    at_return, later = asyncio.run(scenario())
    assert at_return == []
    assert len(later) == 1 and "no IP address known" in later[0].message


def test_cancel_resets_the_connection_and_reports_nothing():
    server = listener()  # never answers the HTTP request
    server.setblocking(False)
    port = server.getsockname()[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        results = []
        starter = starter_for(probe_of(spec.HttpGet(port=port), timeout=0.3))
        cancel = starter(FakeAccess(), results.append)
        conn, _ = await asyncio.wait_for(loop.sock_accept(server), WAIT)
        request = b""
        while b"\r\n\r\n" not in request:  # connected, request sent: waiting for the answer
            request += await asyncio.wait_for(loop.sock_recv(conn, 4096), WAIT)
        assert cancel() is None  # no task to wait for on this path
        await past_the_deadline(cancel.__self__.deadline)
        return results, conn, request

    with server:
        results, conn, request = asyncio.run(scenario())
        with conn:
            assert results == []  # nothing, not even the timeout the deadline would bring
            assert request.startswith(b"GET / HTTP/1.1")
            conn.setblocking(True)
            assert how_it_ended(conn) == "reset"


async def past_the_deadline(deadline: float) -> None:
    """Return once the connection deadlines due at `deadline` have run: a callback on the
    same coarse grid, due later, runs after them (a bounded wait, not a sleep)."""
    loop = asyncio.get_running_loop()
    passed = loop.create_future()
    coarse_timers.SHARED.call_at(loop, deadline + coarse_timers.SHARED.grain,
                                 lambda: passed.set_result(None))
    await asyncio.wait_for(passed, WAIT)


def test_runs_leave_no_reference_cycles():
    async def scenario():
        state, server = await start_http({"/": Route()})
        try:
            for _ in range(3):  # warm up: first-time imports and caches
                await run_probe(probe_of(spec.HttpGet(port=state.port)), FakeAccess())
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds, to look at it
            try:
                for handler in (spec.HttpGet(port=state.port), spec.TcpSocket(port=state.port),
                                spec.TcpSocket(port=free_port_closed())):
                    for _ in range(20):
                        await run_probe(probe_of(handler), FakeAccess())
                gc.collect()
                return [obj for obj in gc.garbage if from_vmhealth(obj)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
        finally:
            server.close()

    # 60 runs (successes and refusals): not one vmhealth object left for the collector.
    # (The asyncio test server makes cycles of its own; those are not counted.)
    assert asyncio.run(scenario()) == []


def from_vmhealth(obj) -> bool:
    module = getattr(obj, "__module__", None) if callable(obj) else type(obj).__module__
    return isinstance(module, str) and module.startswith("vmhealth")


def free_port_closed() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
