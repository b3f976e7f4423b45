"""vmhealth: KubeVirt-style VM health checks for libvirt/KVM hosts."""

__version__ = "0.1.0"
