"""A hostile HTTP guest for the native lane's tests, run as a subprocess.

Why a subprocess: the tests measure how long the engine can keep a Python thread
waiting. A server thread in the test process would compete for the same GIL, so its
own pauses would be measured too, and a stalled test process would also stall the
server (hiding the stall it causes).

Protocol: stdin carries a JSON list of cases; each case is a list of actions played
on every connection whose request line asks for `/case/<index>`. The server prints
its port (one line) once it listens, and runs until stdin closes. Actions (bytes are
latin-1 strings):

- ["send", data]                  send data at once
- ["drip", data, piece, seconds]  send data `piece` bytes at a time, pausing between
- ["sleep", seconds]
- ["stream", line, seconds]       send `line` over and over for at most `seconds`
- ["close"]                       end the stream (FIN)
- ["reset"]                       end with a reset (SO_LINGER 0)
- ["hang", seconds]               read until the peer goes, for at most `seconds`

Every connection ends within HARD_LIMIT_SECONDS whatever the case says.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time

HARD_LIMIT_SECONDS = 8.0
HEAD_LIMIT_BYTES = 64 * 1024


def _read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < HEAD_LIMIT_BYTES:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def _case_of(head: bytes, cases: list) -> list:
    try:
        target = head.split(b" ", 2)[1]
        return cases[int(target.rsplit(b"/", 1)[1])]
    except (IndexError, ValueError):
        return [["reset"]]


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _play(conn: socket.socket, actions: list, until: float) -> None:
    for action in actions:
        verb = action[0]
        if verb == "send":
            conn.sendall(action[1].encode("latin-1"))
        elif verb == "drip":
            data, piece, pause = action[1].encode("latin-1"), action[2], action[3]
            for at in range(0, len(data), piece):
                if time.monotonic() > until:
                    return
                conn.sendall(data[at:at + piece])
                time.sleep(pause)
        elif verb == "sleep":
            time.sleep(min(action[1], max(0.0, until - time.monotonic())))
        elif verb == "stream":
            line, stop = action[1].encode("latin-1") * 64, time.monotonic() + action[2]
            while time.monotonic() < min(stop, until):
                conn.sendall(line)
        elif verb == "close":
            return
        elif verb == "reset":
            _reset(conn)
            return
        elif verb == "hang":
            conn.settimeout(max(0.01, min(action[1], until - time.monotonic())))
            while conn.recv(4096):
                pass
            return


def _serve_one(conn: socket.socket, cases: list) -> None:
    until = time.monotonic() + HARD_LIMIT_SECONDS
    try:
        conn.settimeout(HARD_LIMIT_SECONDS)
        head = _read_head(conn)
        if head:
            _play(conn, _case_of(head, cases), until)
    except OSError:
        pass  # the lane reset or closed: the usual end of a probe
    finally:
        conn.close()


def _accept_forever(listener: socket.socket, cases: list) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve_one, args=(conn, cases), daemon=True).start()


def main() -> None:
    cases = json.loads(sys.stdin.readline())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    threading.Thread(target=_accept_forever, args=(listener, cases), daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()  # until the test closes our stdin (or goes away)


class HostileServer:
    """The test side: starts this module as a subprocess serving `cases`."""

    def __init__(self, cases: list) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(cases) + "\n")
        self._process.stdin.flush()
        self.port = int(self._process.stdout.readline())

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
