"""HTTP/TCP targets for bench_probes.py: a separate process serving on 127.0.0.1 only.

Every connection gets `HTTP/1.1 200 OK` with a two-byte body once a request head
arrives, and is closed; a bare TCP connect (the liveness probe) just sees the close.
Several ports spread the connections over more address/port pairs, as many guests
would. Prints the ports as one JSON line, then serves until stdin closes or
--max-seconds pass (the benchmark never leaves it behind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nok")


class Target(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.head = b""

    def data_received(self, data):
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.write(RESPONSE)
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
