"""Throw-away TLS files for tests, made by the openssl command line tool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.ci import missing


def self_signed(directory: Path, name: str = "server",
                address: str = "127.0.0.1") -> tuple[Path, Path]:
    """(cert, key) of a self-signed certificate for `address`, valid for a day.

    openssl's x509 request marks it a CA, so it can also verify itself: as a client
    certificate with itself as client_ca_file."""
    if shutil.which("openssl") is None:
        message = "openssl not installed (scripts/debian-packages.txt)"
        missing(message)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", f"/CN=vmhealth-test-{name}",
                    "-addext", f"subjectAltName=IP:{address}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key
