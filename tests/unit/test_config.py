"""The daemon's configuration file: defaults, values, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmhealth.connection import DEFAULT_URI, default_uri
from vmhealth.hook import spool
from vmhealth.monitor.config import (
    DAEMON_KEYS,
    ConfigError,
    DaemonConfig,
    load_config,
    parse_config,
    with_spec_defaults,
)

HOST_CONF = Path(__file__).resolve().parents[2] / "host" / "vmhealth.conf"


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    """The environment of a daemon systemd starts: neither variable set."""
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    monkeypatch.delenv(spool.SPOOL_DIR_ENV, raising=False)


def test_the_libvirt_uri_is_the_key_else_libvirt_default_uri_else_qemu_system(monkeypatch):
    assert parse_config("").libvirt_uri == DEFAULT_URI == "qemu:///system"
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
    # As `vmhealth` itself (connection.default_uri) reads it.
    assert parse_config("").libvirt_uri == default_uri() == "qemu:///session"
    assert load_config("/nonexistent/vmhealth.conf").libvirt_uri == "qemu:///session"
    explicit = parse_config("[daemon]\nlibvirt_uri = test:///default\n")
    assert explicit.libvirt_uri == "test:///default"


def test_the_spool_directory_is_the_hooks_and_no_key(monkeypatch, tmp_path):
    assert parse_config("").spool_dir == spool.spool_dir() == "/run/vmhealth/domains"
    monkeypatch.setenv(spool.SPOOL_DIR_ENV, str(tmp_path))
    assert parse_config("").spool_dir == spool.spool_dir() == str(tmp_path)
    with pytest.raises(ConfigError, match=r"\[daemon\] spool_dir: no longer a key: the "
                                          r"hook cannot read this file.*remove the line"):
        parse_config("[daemon]\nspool_dir = /srv/spool\n")


def test_missing_file_means_defaults(tmp_path: Path):
    assert load_config(str(tmp_path / "none.conf")) == DaemonConfig()


def test_shipped_config_is_all_defaults_and_documents_every_key():
    text = HOST_CONF.read_text()
    assert parse_config(text) == DaemonConfig()
    documented: dict[str, dict[str, str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        match = re.match(r"^# (\w+) =\s*(.*)$", line)
        if match:
            documented.setdefault(section, {})[match.group(1)] = match.group(2)
    assert {s: set(keys) for s, keys in documented.items() if s != "defaults"} == \
        {s: set(keys) for s, keys in DAEMON_KEYS.items()}
    # Each documented value, uncommented, is the default.
    for name, keys in documented.items():
        if name == "defaults":
            continue
        for key, value in keys.items():
            assert parse_config(f"[{name}]\n{key} = {value}\n") == DaemonConfig(), key


def test_values_are_read():
    config = parse_config("""
[daemon]
libvirt_uri = qemu+ssh://host/system
agent_threads = 4
native_lane = no
[api]
socket_path = /tmp/vmh.sock
tcp_listen = [::1]:9477
probe_group = users
[backoff]
initial_seconds = 5
[defaults]
periodSeconds = 5
onLivenessFailure = reset
""")
    assert config.libvirt_uri == "qemu+ssh://host/system"
    assert config.agent_threads == 4
    assert config.native_lane is False
    assert config.tcp_address == ("::1", 9477)
    assert config.probe_group == "users"
    assert config.backoff_initial_seconds == 5.0
    assert config.spec_defaults == {"periodSeconds": 5, "onLivenessFailure": "reset"}


@pytest.mark.parametrize(("text", "message"), [
    ("[daemon]\nagent_threads = many\n",
     "[daemon] agent_threads: must be a whole number of at least 1, got 'many'"),
    ("[daemon]\nagent_thread = 4\n", "[daemon] agent_thread: unknown key; allowed:"),
    ("[deamon]\n", "unknown section [deamon]"),
    ("[api]\ntcp_listen = localhost:80\n",
     "[api] tcp_listen: HOST must be an IP address, got 'localhost'"),
    ("[api]\nsocket_path = api.sock\n", "[api] socket_path: must be an absolute path"),
    ("[api]\nsocket_group = no-such-group-xyz\n", "no such group 'no-such-group-xyz'"),
    ("[api]\nprobe_group = no-such-group-xyz\n",
     "[api] probe_group: no such group 'no-such-group-xyz'"),
    ("[backoff]\nmax_seconds = -1\n", "[backoff] max_seconds: must be above 0"),
    ("[backoff]\ninitial_seconds = 60\nmax_seconds = 10\n",
     "max_seconds must not be below initial_seconds"),
    ("[defaults]\nonLivenessFailure = reboot\n",
     "[defaults] onLivenessFailure: must be one of restart, reset, poweroff, none"),
    ("[defaults]\ntimeoutSeconds = 20\n", "timeoutSeconds must not be above periodSeconds"),
    ("[daemon]\nlog_level = loud\n", "[daemon] log_level: must be one of debug, info"),
    ("[daemon]\nnative_lane = maybe\n", "[daemon] native_lane: must be yes or no, got 'maybe'"),
    ("no section\n", "File contains no section headers"),
])
def test_bad_values_name_the_key(text: str, message: str):
    with pytest.raises(ConfigError) as error:
        parse_config(text, "/etc/vmhealth/vmhealth.conf")
    assert message in str(error.value)
    assert str(error.value).startswith("/etc/vmhealth/vmhealth.conf")


def test_spec_defaults_fill_only_missing_fields():
    data = {"livenessProbe": {"tcpSocket": {"port": 22}, "periodSeconds": 30},
            "readinessProbe": {"tcpSocket": {"port": 80}}}
    filled = with_spec_defaults(data, {"periodSeconds": 5, "failureThreshold": 6,
                                       "onLivenessFailure": "none"})
    assert filled["livenessProbe"]["periodSeconds"] == 30
    assert filled["readinessProbe"]["periodSeconds"] == 5
    assert filled["readinessProbe"]["failureThreshold"] == 6
    assert filled["onLivenessFailure"] == "none"
    assert "periodSeconds" not in data["readinessProbe"]  # the input is not changed


def test_a_default_period_below_the_probes_timeout_is_not_applied():
    data = {"readinessProbe": {"tcpSocket": {"port": 80}, "timeoutSeconds": 8}}
    assert "periodSeconds" not in with_spec_defaults(data, {"periodSeconds": 5})[
        "readinessProbe"]
