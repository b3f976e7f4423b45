"""The e2e tests' own harness: the entry point (run) and the peer host (peer).

The sandbox, guests and daemon runner live in tools/sandbox, shared with the demo.
The names tests.e2e.harness.<module> stay valid for them (aliases below), so tests
and benchmarks written against the old layout keep importing the same module objects.
"""

import sys

from tools.sandbox import (
    agent,
    daemon,
    domain_xml,
    events,
    guest_image,
    guests,
    hostcheck,
    namespace,
    paths,
    sandbox,
    waiting,
)

for _module in (agent, daemon, domain_xml, events, guest_image, guests, hostcheck,
                namespace, paths, sandbox, waiting):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
