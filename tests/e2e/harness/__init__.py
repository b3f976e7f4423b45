"""Real-libvirt end-to-end harness: a private libvirtd sandbox and a tiny QEMU guest.

Modules, one job each:
  paths        where the harness keeps builds and logs
  waiting      polling with a deadline (every wait in the harness has one)
  namespace    re-executing a command inside fresh mount, network and pid namespaces
  sandbox      the private libvirtd, virtlogd, bridge and hook directory
  guest_image  the cached kernel + initramfs the test guests boot
  domain_xml   libvirt domain XML for test guests
  agent        qemu-guest-agent commands (ping, exec) with timeouts
  events       libvirt's event loop thread and an event recorder
  guests       define/start/stop test domains and talk to them
  run          the e2e test entry point; demo  the scripted demo
"""
