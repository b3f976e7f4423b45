"""One guest's slow agent never fails another guest (docs/security.md, "Guest agents").

The seam is libvirt_qemu.qemuAgentCommand: hung guests block in it (as libvirt does
while it waits for a frozen agent), healthy ones answer at once. The handlers, the
GuestAccess and its thread pools are the daemon's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import libvirt
import pytest

from vmhealth import spec
from vmhealth.monitor import libvirt_access
from vmhealth.monitor.agent_connections import (
    AgentConnectionError,
    AgentConnections,
    AgentLane,
    ElasticExecutor,
)
from vmhealth.monitor.config import parse_config
from vmhealth.monitor.interfaces import AgentBusy, NoVerdict, Outcome
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.probes.agent_exec import run_agent_exec_probe
from vmhealth.monitor.probes.agent_ping import run_agent_ping_probe

RELEASE_SECONDS = 10  # a hung call ends by itself after this, whatever the test does
WAIT = 10.0  # the most any awaited condition may take on a loaded machine


class Guest:
    def __init__(self, name: str, *, hung: bool = False) -> None:
        self._name, self.hung = name, hung
        self.release = threading.Event()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def name(self):
        return self._name


def healthy_reply(text: str) -> str:
    """A healthy agent's reply: guest-exec starts pid 42, which has exited 0."""
    execute = json.loads(text)["execute"]
    if execute == "guest-exec":
        return json.dumps({"return": {"pid": 42}})
    if execute == "guest-exec-status":
        return json.dumps({"return": {"exited": True, "exitcode": 0}})
    return json.dumps({"return": {}})


@pytest.fixture
def agents(monkeypatch):
    def command(dom, text, timeout, flags):
        with dom._lock:
            dom.calls += 1
            dom.in_flight += 1
            dom.most_in_flight = max(dom.most_in_flight, dom.in_flight)
        try:
            if dom.hung:
                dom.release.wait(RELEASE_SECONDS)
                raise _unresponsive()
            return healthy_reply(text)
        finally:
            with dom._lock:
                dom.in_flight -= 1
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", command)
    # Give up on libvirt's answer 0.2 s after the call's own timeout, not 6 s.
    monkeypatch.setattr(libvirt_access, "AGENT_SYNC_SECONDS", 0)
    monkeypatch.setattr(libvirt_access, "ANSWER_SLACK_SECONDS", 0.2)


async def until(condition, what: str) -> None:
    """Wait (bounded) until condition() holds."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def free_slot_call(access: LibvirtGuestAccess, command: dict):
    """The call made as soon as the guest's agent slot is free again (bounded): the
    hung call's thread ends when it wakes, which a loaded machine may delay."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        try:
            return await access.agent_command(command, 1)
        except AgentBusy:
            assert asyncio.get_running_loop().time() < deadline, "the slot stayed taken"
            await asyncio.sleep(0.01)


def _unresponsive() -> libvirt.libvirtError:
    error = libvirt.libvirtError("Guest agent is not responding")
    error.err = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 0, "Guest agent is not responding",
                 0, None, None, None, 0, 0)
    return error


def probe(handler) -> spec.Probe:
    return spec.Probe(handler=handler, timeout_seconds=1, period_seconds=1)


PING = probe(spec.GuestAgentPing())
EXEC = probe(spec.Exec(command=("true",)))


def test_one_call_per_guest_in_flight_and_the_slot_is_held_until_the_call_ends(agents):
    guest = Guest("hung", hung=True)

    async def scenario():
        with ThreadPoolExecutor(4) as pool:
            access = LibvirtGuestAccess(guest, agent_pool=pool, control_pool=pool)
            first = asyncio.ensure_future(access.agent_command({"execute": "guest-ping"}, 1))
            await until(lambda: guest.in_flight == 1, "the first call to reach the agent")
            with pytest.raises(AgentBusy, match="guest-ping sent to the guest agent"):
                await access.agent_command({"execute": "guest-ping"}, 1)
            with pytest.raises(NoVerdict):  # libvirt gave no verdict in time
                await first
            # The probe stopped waiting, but the call still holds its thread: the slot
            # stays taken until it really ends, so a hung guest never holds two threads.
            with pytest.raises(AgentBusy):
                await access.agent_command({"execute": "guest-ping"}, 1)
            guest.hung = False
            guest.release.set()
            return await free_slot_call(access, {"execute": "guest-ping"})

    assert asyncio.run(scenario()) == {}
    assert guest.most_in_flight == 1


def test_a_probe_that_finds_a_call_in_flight_is_skipped_not_counted(agents):
    guest = Guest("hung", hung=True)

    async def scenario():
        with ThreadPoolExecutor(2) as pool:
            access = LibvirtGuestAccess(guest, agent_pool=pool, control_pool=pool)
            first = asyncio.ensure_future(run_agent_ping_probe(PING, access))
            await until(lambda: guest.in_flight == 1, "the first call to reach the agent")
            second = await run_agent_exec_probe(EXEC, access)
            guest.release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.outcome is Outcome.FAILURE  # libvirt's verdict: not responding
    assert second.outcome is Outcome.SKIPPED and "has not returned yet" in second.message


def test_an_agent_that_is_not_responding_is_a_failure(monkeypatch, agents):
    def unresponsive(dom, text, timeout, flags):
        raise _unresponsive()
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", unresponsive)

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            access = LibvirtGuestAccess(Guest("frozen"), agent_pool=pool, control_pool=pool)
            return (await run_agent_ping_probe(PING, access),
                    await run_agent_exec_probe(EXEC, access))

    ping, execute = asyncio.run(scenario())
    assert ping.outcome is Outcome.FAILURE and "not responding" in ping.message
    assert execute.outcome is Outcome.FAILURE and "not responding" in execute.message


@pytest.mark.parametrize("threads", [2, 6])
def test_more_hung_agents_than_threads_never_fail_a_healthy_guest(agents, threads):
    """Four hung guests, probed every 0.1 s, beside two healthy ones, with fewer pool
    threads than hung guests (2) and with more (6): a healthy guest's probe is never a
    FAILURE; with a thread to spare it keeps succeeding."""
    hung = [Guest(f"hung{i}", hung=True) for i in range(4)]
    healthy = [Guest(f"ok{i}") for i in range(2)]

    async def keep_probing(access, handler, probe_, until, results):
        while asyncio.get_running_loop().time() < until:
            results.append((await handler(probe_, access)).outcome)
            await asyncio.sleep(0.1)

    async def scenario():
        with ThreadPoolExecutor(threads) as pool:
            accesses = {g.name(): LibvirtGuestAccess(g, agent_pool=pool, control_pool=pool)
                        for g in hung + healthy}
            until = asyncio.get_running_loop().time() + 2.5
            results: dict[str, list] = {name: [] for name in accesses}
            runs = [keep_probing(accesses[g.name()], handler, probe_, until,
                                 results[g.name()])
                    for g in hung + healthy
                    for handler, probe_ in ((run_agent_ping_probe, PING),
                                            (run_agent_exec_probe, EXEC))]
            await asyncio.gather(*runs)
            for guest in hung:
                guest.release.set()
            return results

    results = asyncio.run(scenario())
    for guest in healthy:
        outcomes = results[guest.name()]
        assert Outcome.FAILURE not in outcomes, (guest.name(), outcomes)
        if threads > len(hung):
            assert outcomes.count(Outcome.SUCCESS) >= len(outcomes) // 2, outcomes
    for guest in hung + healthy:
        assert guest.most_in_flight <= 1  # never two calls to one guest's agent


# -- agent calls on connections and threads of their own ---------------------------------
# The seam here is the libvirt connection: FakeLibvirtd serves each client connection
# as libvirtd does, at most max_client_requests calls at once, and queues the others
# (recording each call that had to wait). A hung guest's agent holds its call for the
# call's own timeout, then libvirt says "not responding", as libvirt does.

class FakeLibvirtd:
    def __init__(self, max_client_requests: int, hung=()) -> None:
        self.max_client_requests = max_client_requests
        self.hung = set(hung)  # UUIDs whose agents never answer
        self.release = threading.Event()  # ends every hung call at once
        self.connections: list[FakeConnection] = []
        self.queued: list[tuple[str, int]] = []  # (call, connection number) that waited
        self.agents_in_flight = 0
        self.lock = threading.Lock()
        self.refuse_opens = False

    def open(self, uri: str) -> FakeConnection:
        if self.refuse_opens:
            raise _error(libvirt.VIR_ERR_SYSTEM_ERROR, "Failed to connect socket")
        with self.lock:
            conn = FakeConnection(self, len(self.connections))
            self.connections.append(conn)
        return conn


class FakeConnection:
    def __init__(self, libvirtd: FakeLibvirtd, number: int) -> None:
        self.libvirtd, self.number = libvirtd, number
        self._slots = threading.Semaphore(libvirtd.max_client_requests)
        self.agent_calls = 0
        self.most_agent_calls = 0
        self.alive = True
        self.closed = False
        self.close_callback = None

    @contextlib.contextmanager
    def rpc(self, name: str):
        if not self._slots.acquire(blocking=False):
            with self.libvirtd.lock:
                self.libvirtd.queued.append((name, self.number))
            assert self._slots.acquire(timeout=RELEASE_SECONDS * 3), f"{name} queued for good"
        try:
            yield
        finally:
            self._slots.release()

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:
        with self.rpc("lookup"):
            return FakeDomain(self, uuid)

    def setKeepAlive(self, interval, count):
        pass

    def registerCloseCallback(self, callback, opaque):
        self.close_callback = (callback, opaque)

    def unregisterCloseCallback(self):
        self.close_callback = None

    def isAlive(self):
        return self.alive

    def close(self):
        self.closed = True
        return 0


class FakeDomain:
    def __init__(self, conn: FakeConnection, uuid: str) -> None:
        self.conn, self.uuid = conn, uuid

    def UUIDString(self):
        return self.uuid

    def name(self):
        return self.uuid

    def connect(self):
        return self.conn

    def state(self):
        with self.conn.rpc("state"):
            return libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED

    def jobStats(self):
        with self.conn.rpc("jobStats"):
            return {}


def _error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, 0, message, 0, None, None, None, 0, 0)
    return error


def fake_agent_command(dom: FakeDomain, text: str, timeout: int, flags: int) -> str:
    conn, libvirtd = dom.conn, dom.conn.libvirtd
    with conn.rpc("agent"):
        with libvirtd.lock:
            libvirtd.agents_in_flight += 1
            conn.agent_calls += 1
            conn.most_agent_calls = max(conn.most_agent_calls, conn.agent_calls)
        try:
            if dom.uuid in libvirtd.hung:
                libvirtd.release.wait(timeout)  # libvirt waits the call's own timeout
                raise _unresponsive()
            return healthy_reply(text)
        finally:
            with libvirtd.lock:
                libvirtd.agents_in_flight -= 1
                conn.agent_calls -= 1


@pytest.fixture
def libvirtd_agents(monkeypatch):
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", fake_agent_command)
    monkeypatch.setattr(libvirt_access, "AGENT_SYNC_SECONDS", 0)  # no guest-sync here


def lane_for(libvirtd: FakeLibvirtd, **options) -> AgentLane:
    # Below libvirtd's limit, as docs/daemon.md asks of agent_calls_per_connection.
    per_connection = libvirtd.max_client_requests - 1
    return AgentLane(AgentConnections("fake:///", per_connection,
                                      open_connection=libvirtd.open, **options))


def accesses_for(uuids, control, agent_pool, control_pool) -> dict:
    """The daemon's GuestAccess of each guest, its domain on the control connection."""
    return {uuid: LibvirtGuestAccess(FakeDomain(control, uuid), agent_pool=agent_pool,
                                     control_pool=control_pool) for uuid in uuids}


@pytest.mark.parametrize("own_connections", [True, False])
def test_control_calls_proceed_while_agent_calls_hang(libvirtd_agents, own_connections):
    """Six hung agents, libvirtd serving 2 calls per client: on connections of their
    own the agent calls never queue the control calls (state refreshes) nor a healthy
    guest's agent call. On the control connection (own_connections False, as before)
    the same control call waits in libvirtd's queue: what this test guards against."""
    hung = [f"hung{i}" for i in range(6)]
    libvirtd = FakeLibvirtd(max_client_requests=2, hung=hung)
    control = libvirtd.open("fake:///")

    async def scenario():
        with ThreadPoolExecutor(4) as control_pool:
            agent_pool = lane_for(libvirtd) if own_connections else ThreadPoolExecutor(16)
            accesses = accesses_for([*hung, "healthy"], control, agent_pool, control_pool)
            stuck = [asyncio.ensure_future(accesses[uuid].agent_command(
                {"execute": "guest-ping"}, RELEASE_SECONDS)) for uuid in hung]
            if own_connections:
                await until(lambda: libvirtd.agents_in_flight == len(hung),
                            "every hung call to reach its agent")
            else:
                await until(lambda: libvirtd.queued, "libvirtd to queue a call")
            refresh = asyncio.ensure_future(accesses["healthy"].refresh_state())
            if own_connections:
                state = await asyncio.wait_for(refresh, WAIT)
                assert state.name == "running"
                assert await accesses["healthy"].agent_command(
                    {"execute": "guest-ping"}, 1) == {}
            else:
                await until(lambda: ("state", control.number) in libvirtd.queued,
                            "the state refresh to wait in libvirtd's queue")
            libvirtd.release.set()
            await asyncio.gather(*stuck, return_exceptions=True)
            await asyncio.wait_for(refresh, WAIT)
            agent_pool.shutdown(wait=True)
            if own_connections:
                agent_pool.close_connections()

    asyncio.run(scenario())
    if own_connections:
        assert libvirtd.queued == []
        assert control.most_agent_calls == 0  # never an agent call on the control connection
        # The control connection, one per hung call, one for the healthy guest's call.
        assert len(libvirtd.connections) == 1 + len(hung) + 1
        assert all(conn.most_agent_calls <= 1 for conn in libvirtd.connections)
        assert all(conn.closed for conn in libvirtd.connections[1:])
    else:
        assert control.most_agent_calls == libvirtd.max_client_requests


def keep_probing(access, handler, probe_, until_time, results):
    async def run():
        while asyncio.get_running_loop().time() < until_time:
            results.append((await handler(probe_, access)).outcome)
            await asyncio.sleep(0.1)
    return run()


@pytest.mark.parametrize("own_lane", [True, False])
def test_more_hung_agents_than_any_fixed_pool_never_delay_another_guests_call(
        libvirtd_agents, own_lane):
    """24 hung agents (more than the old default of 16 agent threads) beside one healthy
    guest, ping and exec probes every 0.1 s. In the lane every call starts at once on
    a connection with room: the healthy guest's probes succeed, and each hung
    guest's probe gets libvirt's own verdict on its own call (a FAILURE, or SKIPPED
    while its previous call is still out), never an ERROR for waiting. In a fixed
    pool of 4 threads on one connection (as before) both guests wait: ERRORs."""
    hung = [f"hung{i}" for i in range(24)]
    libvirtd = FakeLibvirtd(max_client_requests=5, hung=hung)
    control = libvirtd.open("fake:///")

    async def scenario():
        with ThreadPoolExecutor(2) as control_pool:
            pool = lane_for(libvirtd) if own_lane else ThreadPoolExecutor(4)
            accesses = accesses_for([*hung, "healthy"], control, pool, control_pool)
            until_time = asyncio.get_running_loop().time() + 3
            results: dict[str, list] = {uuid: [] for uuid in accesses}
            await asyncio.gather(*(keep_probing(access, handler, probe_, until_time,
                                                results[uuid])
                                   for uuid, access in accesses.items()
                                   for handler, probe_ in ((run_agent_ping_probe, PING),
                                                           (run_agent_exec_probe, EXEC))))
            libvirtd.release.set()
            pool.shutdown(wait=True)
            if own_lane:
                pool.close_connections()
            return results, pool

    results, pool = asyncio.run(scenario())
    healthy = results["healthy"]
    hung_outcomes = [outcome for uuid in hung for outcome in results[uuid]]
    assert Outcome.FAILURE not in healthy, healthy
    if own_lane:
        # SKIPPED: its own ping and exec probes meet (one call per guest at a time).
        assert set(healthy) <= {Outcome.SUCCESS, Outcome.SKIPPED}, healthy
        assert healthy.count(Outcome.SUCCESS) >= len(healthy) // 2, healthy
        assert Outcome.ERROR not in hung_outcomes
        assert hung_outcomes.count(Outcome.FAILURE) >= 2 * len(hung)  # each probed again
        assert pool.most_threads <= len(hung) + 1  # threads <= guests with a call pending
        assert libvirtd.queued == []
    else:
        assert Outcome.ERROR in healthy + hung_outcomes


def test_the_lane_never_queues_a_call_and_lets_idle_threads_go():
    executor = ElasticExecutor("test", idle_seconds=0.05)
    gate = threading.Event()
    try:
        blocked = [executor.submit(gate.wait, RELEASE_SECONDS) for _ in range(40)]
        # Forty calls hang; the next one still runs at once, in a thread of its own.
        assert executor.submit(lambda: "ran").result(timeout=WAIT) == "ran"
        assert executor.most_threads == 41
        gate.set()
        assert all(future.result(timeout=WAIT) for future in blocked)
        deadline = time.monotonic() + WAIT
        while executor.threads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert executor.threads == 0  # idle threads ended
        assert executor.submit(lambda: 2).result(timeout=WAIT) == 2  # a new one starts
        # Reuse: calls one after another share one waiting thread.
        before = executor.most_threads
        for _ in range(20):
            executor.submit(lambda: None).result(timeout=WAIT)
        assert executor.most_threads == before
    finally:
        gate.set()
        executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(lambda: None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_agent_connections_open_when_full_close_when_idle_and_reopen_when_dead(
        libvirtd_agents):
    libvirtd = FakeLibvirtd(max_client_requests=3, hung=["h1", "h2", "h3"])
    clock = Clock()
    connections = AgentConnections("fake:///", 2, open_connection=libvirtd.open,
                                   idle_close_seconds=60, clock=clock)
    ping = json.dumps({"execute": "guest-ping"})
    with ThreadPoolExecutor(8) as pool:
        hung_calls = [pool.submit(connections.command, FakeDomain(None, uuid), ping, 30)
                      for uuid in ("h1", "h2", "h3")]
        wait_for(lambda: libvirtd.agents_in_flight == 3, "three hung calls")
        assert connections.open_count == 2  # 2 calls on the first, 1 on a second
        assert connections.command(FakeDomain(None, "ok"), ping, 1) == '{"return": {}}'
        libvirtd.release.set()
        for call in hung_calls:
            with pytest.raises(libvirt.libvirtError):
                call.result(timeout=WAIT)
    assert [conn.most_agent_calls for conn in libvirtd.connections] == [2, 2]
    # Idle for a minute: the extra one is closed, one stays open.
    clock.now += 61
    connections.command(FakeDomain(None, "ok"), ping, 1)
    assert connections.open_count == 1
    assert [conn.closed for conn in libvirtd.connections] == [False, True]
    # libvirtd restarted: the close callback marks it dead; the next call opens another.
    first = libvirtd.connections[0]
    callback, opaque = first.close_callback
    first.alive = False
    callback(first, 1, opaque)
    connections.command(FakeDomain(None, "ok"), ping, 1)
    assert first.closed and len(libvirtd.connections) == 3
    # A failed call on a connection that is no longer alive drops it too.
    libvirtd.connections[2].alive = False
    with pytest.raises(libvirt.libvirtError):
        connections.command(FakeDomain(None, "h1"), ping, 1)
    assert libvirtd.connections[2].closed and connections.open_count == 0
    connections.close_all()


def test_agent_connections_back_off_while_libvirtd_refuses(libvirtd_agents):
    libvirtd = FakeLibvirtd(max_client_requests=5)
    clock = Clock()
    connections = AgentConnections("fake:///", 4, open_connection=libvirtd.open,
                                   reconnect_max_seconds=4, clock=clock)
    ping = json.dumps({"execute": "guest-ping"})
    libvirtd.refuse_opens = True
    with pytest.raises(AgentConnectionError, match="Failed to connect socket"):
        connections.command(FakeDomain(None, "ok"), ping, 1)
    libvirtd.refuse_opens = False
    with pytest.raises(AgentConnectionError, match="next try in 1 s"):
        connections.command(FakeDomain(None, "ok"), ping, 1)  # not tried: backing off
    assert libvirtd.connections == []
    clock.now += 1
    assert connections.command(FakeDomain(None, "ok"), ping, 1) == '{"return": {}}'
    connections.close_all()
    assert libvirtd.connections[0].closed
    with pytest.raises(AgentConnectionError, match="stopping"):
        connections.command(FakeDomain(None, "ok"), ping, 1)


def test_no_agent_connection_is_an_error_not_a_failure(libvirtd_agents):
    libvirtd = FakeLibvirtd(max_client_requests=5)
    libvirtd.refuse_opens = True

    async def scenario():
        with ThreadPoolExecutor(1) as control_pool:
            lane = lane_for(libvirtd)
            access = LibvirtGuestAccess(FakeDomain(None, "ok"), agent_pool=lane,
                                        control_pool=control_pool)
            try:
                return await run_agent_ping_probe(PING, access)
            finally:
                lane.shutdown(wait=True)

    result = asyncio.run(scenario())
    assert result.outcome is Outcome.ERROR
    assert "no libvirt connection" in result.message or "cannot open" in result.message


def test_agent_calls_use_a_libvirt_connection_of_their_own(monkeypatch):
    """With libvirt's own test driver: the agent command reaches the same domain, looked
    up on the lane's connection, never on the daemon's control connection."""
    seen = []

    def command(dom, text, timeout, flags):
        seen.append((dom.UUIDString(), dom.connect(), dom.connect().getURI()))
        return json.dumps({"return": {}})
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", command)
    control = libvirt.open("test:///default")
    dom = control.lookupByName("test")
    lane = AgentLane(AgentConnections("test:///default", 4))

    async def scenario():
        with ThreadPoolExecutor(1) as control_pool:
            access = LibvirtGuestAccess(dom, agent_pool=lane, control_pool=control_pool)
            return await access.agent_command({"execute": "guest-ping"}, 1)

    try:
        assert asyncio.run(scenario()) == {}
    finally:
        lane.shutdown(wait=True)
        lane.close_connections()
    [(uuid, conn, uri)] = seen
    assert uuid == dom.UUIDString()
    assert conn is not control and uri == "test:///default"
    control.close()


def test_agent_threads_is_deprecated_with_a_log_line(caplog):
    config = parse_config("[daemon]\nlibvirt_uri = test:///default\nagent_threads = 4\n"
                          "agent_calls_per_connection = 1\n")
    with caplog.at_level(logging.WARNING, logger="vmhealth.agent"):
        lane = AgentLane.for_daemon(config)
    lane.shutdown()
    assert "agent_threads is deprecated and ignored" in caplog.text
    assert lane.connections._per_connection == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vmhealth.agent"):
        AgentLane.for_daemon(parse_config("")).shutdown()
    assert "deprecated" not in caplog.text


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_daemon_runs_agent_calls_in_its_lane_and_closes_it_at_stop(monkeypatch, tmp_path):
    """The daemon's agent pool is an AgentLane on connections of its own (test driver),
    and stopping the daemon closes them."""
    from vmhealth.monitor.config import DaemonConfig
    from vmhealth.monitor.daemon import Daemon

    used = []

    def command(dom, text, timeout, flags):
        used.append(dom.connect())
        return json.dumps({"return": {}})
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", command)
    daemon = Daemon(DaemonConfig(libvirt_uri="test:///default", spool_dir=str(tmp_path)))
    lane = daemon.connection.agent_pool
    assert isinstance(lane, AgentLane)

    async def scenario():
        await daemon.start()
        try:
            access = LibvirtGuestAccess(daemon.conn.lookupByName("test"), agent_pool=lane,
                                        control_pool=daemon.connection.control_pool)
            assert await access.agent_command({"execute": "guest-ping"}, 1) == {}
            assert lane.connections.open_count == 1
            assert used[0] is not daemon.conn
        finally:
            await daemon.shutdown()

    asyncio.run(scenario())
    assert lane.connections.open_count == 0
    with pytest.raises(AgentConnectionError, match="stopping"):
        lane.connections.command(FakeDomain(None, "x"), "{}", 1)
