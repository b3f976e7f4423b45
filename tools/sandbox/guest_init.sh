#!/bin/busybox sh
# pid 1 of the vmhealth e2e guest (busybox sh).  It does only what the kernel command
# line asks (vmh.* parameters, see docs/e2e.md) and keeps every service a plain child
# with a pid file in /run/vmh, so a test can kill one with guest-exec.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /run /tmp /var
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -sfn /run /var/run
mkdir -p /run/vmh

say() { echo "vmh-init: $*"; }

VMH_IP= VMH_IP6= VMH_HTTP= VMH_TCP= VMH_WATCHDOG= VMH_HEALTHY= VMH_GA_BLOCK=
for word in $(cat /proc/cmdline); do
    case "$word" in
        vmh.ip=*) VMH_IP=${word#vmh.ip=} ;;
        vmh.ip6=*) VMH_IP6=${word#vmh.ip6=} ;;
        vmh.http=*) VMH_HTTP=${word#vmh.http=} ;;
        vmh.tcp=*) VMH_TCP=${word#vmh.tcp=} ;;
        vmh.watchdog=*) VMH_WATCHDOG=${word#vmh.watchdog=} ;;
        vmh.healthy=*) VMH_HEALTHY=${word#vmh.healthy=} ;;
        vmh.ga_block=*) VMH_GA_BLOCK=${word#vmh.ga_block=} ;;
    esac
done

# Modules in dependency order (the image builder wrote the list from modules.dep).
while read -r module; do
    insmod "/lib/modules/$module" || say "insmod $module failed"
done < /etc/vmh-modules

# udev would make these links; the agent and tests expect them.
wait_for() {  # wait_for PATH TENTHS: the devices appear asynchronously after insmod
    n=0
    while [ ! -e "$1" ] && [ "$n" -lt "$2" ]; do sleep 0.1; n=$((n + 1)); done
    [ -e "$1" ]
}
n=0
until ls /sys/class/virtio-ports/*/name >/dev/null 2>&1 || [ "$n" -ge 50 ]; do
    sleep 0.1
    n=$((n + 1))
done
mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/*; do
    [ -r "$port/name" ] || continue
    ln -sfn "../${port##*/}" "/dev/virtio-ports/$(cat "$port/name")"
done

ip link set lo up
if [ -n "$VMH_IP" ]; then
    wait_for /sys/class/net/eth0 50 || say "no eth0"
    ip addr add "$VMH_IP" dev eth0
    if [ -n "$VMH_IP6" ]; then
        # No duplicate address detection: the address is usable at once (busybox ip
        # has no "nodad").
        echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
        ip -6 addr add "$VMH_IP6" dev eth0
    fi
    ip link set eth0 up
fi

start() {  # start NAME ARGV...: a background child with /run/vmh/NAME.pid
    name=$1
    shift
    "$@" &
    echo $! > "/run/vmh/$name.pid"
    say "started $name (pid $!)"
}

[ "$VMH_HEALTHY" = 1 ] && echo healthy > /tmp/healthy.txt

if [ -n "$VMH_HTTP" ]; then
    mkdir -p /srv/www
    echo "vmhealth e2e guest" > /srv/www/index.html
    start httpd httpd -f -p "$VMH_HTTP" -h /srv/www
fi
# -ll: keep listening after each connection; each connection just gets its input back.
[ -n "$VMH_TCP" ] && start tcp nc -ll -p "$VMH_TCP" -e cat

if [ "$VMH_WATCHDOG" = 1 ]; then
    if wait_for /dev/watchdog 50; then
        # Feed every 2 s, fire 4 s after the last feed (the KubeVirt guide's example).
        start watchdog watchdog -F -t 2000ms -T 4000ms /dev/watchdog
    else
        say "no /dev/watchdog"
    fi
fi

set -- qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0
[ -n "$VMH_GA_BLOCK" ] && set -- "$@" --block-rpcs="$VMH_GA_BLOCK"
start qemu-ga "$@"

say "ready"
# pid 1 must never exit (kernel panic); wait reaps children that tests kill.
while :; do
    wait
    sleep 1
done
