"""A small client of the daemon's API on its unix socket (used by the CLI).

http.client does the HTTP; only the connection is ours, to reach a unix socket.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/run/vmhealth/api.sock"


class ApiUnavailable(Exception):
    """The daemon cannot be reached; the message says where we looked."""


class ApiError(Exception):
    """The daemon answered with an error; `retry_after` is its Retry-After in seconds
    (429: this probe ran a moment ago), or None."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _request(self, method: str, path: str, timeout: float | None = None
                 ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.socket_path, timeout if timeout is not None
                               else self.timeout)
        try:
            conn.request(method, path)
            return conn, conn.getresponse()
        except OSError as exc:
            conn.close()
            raise ApiUnavailable(f"cannot reach the vmhealth daemon at {self.socket_path}: "
                                 f"{exc.strerror or exc} (is `vmhealth daemon` running? "
                                 "choose the socket with --socket or VMHEALTH_SOCKET)") from None

    def _json(self, method: str, path: str) -> Any:
        conn, response = self._request(method, path)
        try:
            body = response.read()
        finally:
            conn.close()
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(response.status, body.decode(errors="replace").strip()) from None
        if response.status >= 400:
            error = data.get("error", data) if isinstance(data, dict) else data
            raise ApiError(response.status, str(error),
                           _seconds(response.getheader("Retry-After")))
        return data

    def status(self, domain: str | None = None) -> Any:
        return self._json("GET", "/status" + (f"/{quote(domain, safe='')}" if domain else ""))

    def probe(self, domain: str, kind: str) -> Any:
        return self._json("POST", f"/probe/{quote(domain, safe='')}/{quote(kind, safe='')}")

    def events(self, *, follow: bool = False, domain: str | None = None, since: int = 0
               ) -> Iterator[dict[str, Any]]:
        query: dict[str, str] = {"since": str(since)}
        if follow:
            query["follow"] = "1"
        if domain:
            query["domain"] = domain
        # Following waits for events as long as it takes: no read timeout then.
        conn, response = self._request("GET", "/events?" + urlencode(query),
                                       timeout=None if follow else self.timeout)
        try:
            for raw in response:
                line = raw.strip()
                if line:  # empty lines are the server's heartbeats
                    yield json.loads(line)
        finally:
            conn.close()


def _seconds(header: str | None) -> float | None:
    """Retry-After in its delay-seconds form (the daemon sends no HTTP dates)."""
    if header is None or not header.strip().isdigit():
        return None
    return float(header)
