"""A private libvirtd sandbox and a tiny QEMU guest: shared by the demo (tools/demo)
and the e2e tests (tests/e2e), which both run vmhealth against a real libvirt.

Modules, one job each:
  paths        where builds and logs go (build/e2e)
  waiting      polling with a deadline (every wait here has one)
  namespace    re-executing a command inside fresh mount, network and pid namespaces
  sandbox      the private libvirtd, virtlogd, bridge and hook directory
  hostcheck    proof that the host's libvirt and account files did not change
  guest_image  the cached kernel + initramfs the guests boot (init: guest_init.sh)
  domain_xml   libvirt domain XML for those guests
  agent        qemu-guest-agent commands (ping, exec) with timeouts
  events       libvirt's event loop thread and an event recorder
  guests       define/start/stop guests and talk to them
  daemon       `vmhealth daemon` as a subprocess with its own config and API socket
"""
