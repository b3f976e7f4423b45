"""HTTP/TCP targets for bench_probes.py: a separate process serving on 127.0.0.1 only.

Every connection gets `HTTP/1.1 200 OK` with a two-byte body once a request head
arrives, and is closed; a bare TCP connect (the liveness probe) just sees the close.
Several ports spread the connections over more address/port pairs, as many guests
would. Prints the ports as one JSON line, then serves until stdin closes or
--max-seconds pass (the benchmark never leaves it behind).

The targets are also where the benchmark times the probes, from outside the daemon:
while recording, each HTTP request is noted as (path, arrival), the arrival being
time.monotonic() (the same clock as the daemon's event loop) when the connection was
accepted. Two paths, on any port, control that and are never recorded themselves:

- `GET /_arrivals/start`: forget what was recorded and record from now;
- `GET /_arrivals/take`: stop recording and answer `{"arrivals": {path: [seconds,
  ...]}, "dropped": n}` (at most MAX_ARRIVALS are kept; n were not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nok")
START, TAKE = b"/_arrivals/start", b"/_arrivals/take"
MAX_ARRIVALS = 2_000_000  # ~ half an hour at 1,000 a second: a soak never records


class Arrivals:
    """The recorder all ports share."""

    def __init__(self) -> None:
        self.recording = False
        self.by_path: dict[bytes, list[float]] = {}
        self.kept = self.dropped = 0

    def start(self) -> bytes:
        self.by_path, self.kept, self.dropped = {}, 0, 0
        self.recording = True
        return RESPONSE

    def note(self, path: bytes, arrived: float) -> None:
        if not self.recording:
            return
        if self.kept >= MAX_ARRIVALS:
            self.dropped += 1
            return
        self.kept += 1
        times = self.by_path.get(path)
        if times is None:
            times = self.by_path[path] = []
        times.append(arrived)

    def take(self) -> bytes:
        self.recording = False
        body = json.dumps({
            "arrivals": {path.decode("ascii", "replace"): times
                         for path, times in self.by_path.items()},
            "dropped": self.dropped}).encode()
        self.by_path, self.kept, self.dropped = {}, 0, 0
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


ARRIVALS = Arrivals()


class Target(asyncio.Protocol):
    def connection_made(self, transport):
        self.arrived = time.monotonic()
        self.transport = transport
        self.head = b""

    def data_received(self, data):
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        request_line = self.head.split(b"\r\n", 1)[0].split(b" ")
        path = request_line[1] if len(request_line) == 3 else b""
        if path == START:
            answer = ARRIVALS.start()
        elif path == TAKE:
            answer = ARRIVALS.take()
        else:
            ARRIVALS.note(path, self.arrived)
            answer = RESPONSE
        self.transport.write(answer)
        self.transport.close()


async def serve(port_count: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(Target, "127.0.0.1", 0, backlog=4096)
               for _ in range(port_count)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps({"ports": ports}), flush=True)
    stdin_closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.done()
                    or stdin_closed.set_result(None))
    try:
        await asyncio.wait_for(stdin_closed, max_seconds)
    except asyncio.TimeoutError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    try:
        import uvloop  # a lighter server leaves more of the 2 cores to the daemon side
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.ports, args.max_seconds))


if __name__ == "__main__":
    main()
