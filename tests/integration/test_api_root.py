"""The API's peer checks with real users: only root and the probe group may run probes
over the socket. Needs root (it runs clients as `nobody`), so it is an integration test."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

from tests.ci import missing
from tests.unit.api_support import Server

from vmhealth.monitor.api import OnDemandProbes
from vmhealth.monitor.client import ApiClient

AS_OTHER_USER = """
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
conn = Unix("localhost", timeout=30)
conn.request(sys.argv[2], sys.argv[3])
print(conn.getresponse().status)
"""


def test_only_root_and_probe_group_run_probes_over_the_socket():
    if os.geteuid() != 0:
        missing("runs clients as other users: needs root (scripts/test runs as root)")
    directory = tempfile.mkdtemp(prefix="vmhealth-api-")
    os.chmod(directory, 0o755)  # other users must reach the socket inside
    nobody, users = pwd.getpwnam("nobody"), grp.getgrnam("users").gr_gid
    srv = Server(os.path.join(directory, "api.sock"), socket_group="nogroup",
                 probe_group="users", on_demand=OnDemandProbes(interval=0))

    def status_as(method, url, group, extra_groups=()):
        done = subprocess.run(
            [sys.executable, "-I", "-c", AS_OTHER_USER, srv.api.socket_path, method, url],
            user=nobody.pw_uid, group=group, extra_groups=list(extra_groups),
            capture_output=True, text=True, timeout=30, check=True)
        return int(done.stdout)

    try:
        nogroup = nobody.pw_gid
        assert status_as("GET", "/status", nogroup) == 200  # reading needs the socket only
        assert status_as("POST", "/probe/web2/readiness", nogroup) == 403
        assert srv.source.probed == []
        assert status_as("POST", "/probe/web2/readiness", nogroup, [users]) == 200
        assert status_as("POST", "/probe/web2/readiness", users, [nogroup]) == 200
        assert ApiClient(srv.api.socket_path).probe("web2", "readiness")  # root
        assert len(srv.source.probed) == 3
    finally:
        srv.close()
        shutil.rmtree(directory)
