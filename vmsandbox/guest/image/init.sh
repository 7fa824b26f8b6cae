#!/bin/busybox sh
# shellcheck shell=dash
# /init of the vmsandbox guest initramfs (PID 1 until it execs the agent in the new root).
#
# Loads the virtio/vsock/overlay modules listed in /etc/vmsandbox/modules (a device's driver
# only when the VM has that device), finds the root disk by its virtio serial, mounts it
# read-only under a tmpfs-backed overlay, prepares the kernel filesystems in the new root
# and execs the guest agent there as its PID 1 (told the uptime at which this script began,
# so it can report it); the agent powers the VM off when it ends. With
# vmsandbox.net=IP/PREFIX,GATEWAY,DNS[+DNS] on the kernel command line it configures eth0 (the
# node's tap), the default route and /etc/resolv.conf first, and with vmsandbox.net6=IP6/PREFIX,
# GATEWAY6 the IPv6 address and default route too (else IPv6 is off on eth0). Any failure powers
# the VM off after printing why, so the host sees an exit instead of a hang. Under emulation
# every process it starts costs the boot ~10 ms, so it starts few (one modprobe, one mount -a).

/bin/busybox --install -s /bin
export PATH=/bin

ROOT_SERIAL=vmsb-root
NEWROOT=/newroot
OVERLAY=/overlay
PYTHON=/usr/bin/python3
# The agent is standard library only and lives, byte-compiled, in AGENT_PATH, the one directory
# on its sys.path: the interpreter starts isolated and without site packages (-I -S).
AGENT_PATH=/usr/lib/vmsandbox/python
AGENT_MAIN="import sys; sys.path.insert(0, '$AGENT_PATH'); from vmsandbox.guest.__main__ import run_as_init; run_as_init()"
AGENT_STATE_DIR=/run/vmsandbox-guest
# Where the agent listens: the named virtio-serial port, else vsock, unless the kernel command
# line says otherwise with vmsandbox.listen=SPEC (same syntax as the agent's --listen).
LISTEN=auto
DISK_WAIT_TENTHS=100     # 10 s for the root disk to show up
PORT_NAME_WAIT_TENTHS=20 # 2 s for virtio-serial port names to arrive from the host
NIC_WAIT_TENTHS=50       # 5 s for eth0 to appear after virtio_net is loaded
# The root disk's read-ahead: the interpreter's first start faults its binary and libraries in,
# and under emulation each request to the disk costs far more than its bytes. 4 MiB instead of
# the kernel's 128 KiB took the agent's exec to its ready line from 1216 to 1123 ms (medians of
# 12 alternating TCG boots). It never reads past a file's end.
ROOT_READ_AHEAD_KB=4096
NEW_ROOT_FSTAB=/etc/vmsandbox/newroot.fstab
MODULE_LIST=/etc/vmsandbox/modules # path [virtio device types], in load order
PCI_DEVICES=/sys/bus/pci/devices
DEV_LINKS=/etc/vmsandbox/devlinks # symlinks for /dev, made by the image builder
NET_RESOLVERS=""

say() {
    echo "vmsandbox-init: $*"
}

# Sets UPTIME from /proc/uptime (under the root $1, once /proc has moved there). Shell builtins
# only, here and below where it matters: under emulation every fork+exec of busybox costs tens
# of milliseconds on the way to the agent.
stamp() {
    read -r UPTIME _ <"${1:-}/proc/uptime"
}

die() {
    say "FATAL: $*; powering off"
    sync
    poweroff -f
    sleep 5 # poweroff -f does not return; never let PID 1 exit (that panics the kernel)
    exit 1
}

mount_kernel_filesystems() {
    mkdir -p /proc /sys /dev
    mount -t proc -o nosuid,nodev,noexec proc /proc || die "cannot mount /proc"
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || die "cannot mount /sys"
    mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || die "cannot mount /dev"
}

# Sets VIRTIO to the types of the virtio devices on the PCI bus, padded with spaces (" 2 3 "):
# a modern device's id is 0x1040 + its type, a transitional one (0x1000-0x103f) has its type as
# the subsystem id. The PCI core is built in, so the devices are listed before any driver loads.
find_virtio_devices() {
    VIRTIO=" "
    for dev in "$PCI_DEVICES"/*; do
        [ -r "$dev/vendor" ] || continue
        [ -r "$dev/device" ] || continue
        read -r vendor <"$dev/vendor" || continue
        [ "$vendor" = 0x1af4 ] || continue
        read -r id <"$dev/device" || continue
        if [ $((id)) -ge $((0x1040)) ]; then
            VIRTIO="$VIRTIO$((id - 0x1040)) "
        elif [ -r "$dev/subsystem_device" ] && read -r id <"$dev/subsystem_device"; then
            VIRTIO="$VIRTIO$((id)) "
        fi
    done
}

# Whether the VM has a virtio device of one of the comma-separated types $1.
has_virtio_device() {
    old_ifs=$IFS
    IFS=,
    for type in $1; do
        case "$VIRTIO" in *" $type "*)
            IFS=$old_ifs
            return 0
            ;;
        esac
    done
    IFS=$old_ifs
    return 1
}

# One modprobe for the whole list (the initramfs's modules.dep has it in load order): a process
# per module costs the boot ~10 ms each under emulation. A module listed with device types loads
# only if the VM has such a device (loading vsock where there is none cost ~50 ms under TCG).
load_modules() {
    find_virtio_devices
    set --
    while read -r module devices; do
        [ -n "$module" ] || continue
        [ -z "$devices" ] || has_virtio_device "$devices" || continue
        module=${module##*/}
        set -- "$@" "${module%.ko}"
    done <"$MODULE_LIST"
    [ "$#" -eq 0 ] || modprobe -a "$@" || die "cannot load the modules $*"
    old_ifs=$IFS
    IFS=,
    LOADED="$*" # for the console's modules line
    IFS=$old_ifs
}

# Sets ROOT_DEV to /dev/vdX whose virtio serial is $1; fails if none has it (yet). Sets a
# variable rather than printing: a command substitution would fork a subshell per try.
disk_by_serial() {
    for block in /sys/block/vd*; do
        [ -r "$block/serial" ] || continue
        serial=""
        read -r serial <"$block/serial" || true
        if [ "$serial" = "$1" ]; then
            ROOT_DEV="/dev/${block##*/}"
            return 0
        fi
    done
    return 1
}

# Sets ROOT_DEV (see disk_by_serial) once the root disk and its node are there, and its
# read-ahead.
wait_for_root_disk() {
    tries=0
    until disk_by_serial "$ROOT_SERIAL"; do
        tries=$((tries + 1))
        [ "$tries" -lt "$DISK_WAIT_TENTHS" ] || die "no virtio-blk disk with serial '$ROOT_SERIAL'"
        sleep 0.1
    done
    # devtmpfs creates the node asynchronously after the disk is probed.
    until [ -b "$ROOT_DEV" ]; do
        tries=$((tries + 1))
        [ "$tries" -lt "$DISK_WAIT_TENTHS" ] || die "$ROOT_DEV has no device node"
        sleep 0.1
    done
    queue="/sys/block/${ROOT_DEV##*/}/queue/read_ahead_kb"
    echo "$ROOT_READ_AHEAD_KB" >"$queue" || say "warning: cannot set $queue"
    ROOT_READ_AHEAD=""
    read -r ROOT_READ_AHEAD <"$queue" || true
}

# The sandbox's NIC, as the node agent prepared it; no vmsandbox.net means no network (mode none).
configure_network() {
    ip link set lo up || die "cannot bring up lo"
    net=""
    net6=""
    read -r cmdline </proc/cmdline
    for arg in $cmdline; do
        case "$arg" in
        vmsandbox.net=*) net=${arg#vmsandbox.net=} ;;
        vmsandbox.net6=*) net6=${arg#vmsandbox.net6=} ;;
        vmsandbox.listen=*) LISTEN=${arg#vmsandbox.listen=} ;;
        esac
    done
    [ -n "$net" ] || return 0
    address=${net%%,*}
    rest=${net#*,}
    gateway=${rest%%,*}
    NET_RESOLVERS=${rest#*,}
    tries=0
    until [ -e /sys/class/net/eth0 ]; do
        tries=$((tries + 1))
        [ "$tries" -lt "$NIC_WAIT_TENTHS" ] || die "vmsandbox.net is set but the VM has no eth0"
        sleep 0.1
    done
    ip addr add "$address" dev eth0 || die "cannot set address $address on eth0"
    configure_ipv6
    ip link set eth0 up || die "cannot bring up eth0"
    ip route add default via "$gateway" dev eth0 || die "cannot route via $gateway"
    [ -z "$net6" ] || ip -6 route add default via "${net6#*,}" dev eth0 || die "cannot route via ${net6#*,}"
}

# The node's address and the kernel's EUI-64 link-local one (neighbour discovery needs it), no
# router advertisements or autoconfiguration, no duplicate address detection (the node handed
# the addresses out, and a tentative one would delay the start). Without vmsandbox.net6 the
# node gives the sandbox no IPv6, and eth0 has none at all.
configure_ipv6() {
    conf=/proc/sys/net/ipv6/conf/eth0
    if [ -z "$net6" ]; then
        [ -w $conf/disable_ipv6 ] && echo 1 >$conf/disable_ipv6
        return 0
    fi
    [ -w $conf/disable_ipv6 ] || die "vmsandbox.net6 is set but the kernel has no IPv6"
    for setting in accept_ra=0 autoconf=0 accept_dad=0 dad_transmits=0; do
        echo "${setting#*=}" >"$conf/${setting%=*}" || die "cannot set $conf/${setting%=*}"
    done
    ip -6 addr add "${net6%%,*}" dev eth0 || die "cannot set address ${net6%%,*} on eth0"
}

write_resolv_conf() {
    [ -n "$NET_RESOLVERS" ] || return 0
    mkdir -p "$NEWROOT/etc"
    rm -f "$NEWROOT/etc/resolv.conf"
    old_ifs=$IFS
    IFS=+ # resolvers are +-separated; splitting by IFS forks nothing
    for resolver in $NET_RESOLVERS; do
        echo "nameserver $resolver"
    done >"$NEWROOT/etc/resolv.conf"
    IFS=$old_ifs
}

mount_root() {
    # $OVERLAY and $NEWROOT are directories of the initramfs itself.
    mount -t tmpfs -o mode=0755 overlay-tmpfs "$OVERLAY" || die "cannot mount the overlay tmpfs"
    mkdir -p "$OVERLAY/lower" "$OVERLAY/upper" "$OVERLAY/work"
    mount -t ext4 -o ro "$ROOT_DEV" "$OVERLAY/lower" || die "cannot mount $ROOT_DEV read-only"
    mount -t overlay -o "lowerdir=$OVERLAY/lower,upperdir=$OVERLAY/upper,workdir=$OVERLAY/work" \
        overlay "$NEWROOT" || die "cannot mount the root overlay"
    [ -x "$NEWROOT$PYTHON" ] || die "$ROOT_DEV has no $PYTHON"
    [ -d "$NEWROOT$AGENT_PATH/vmsandbox/guest" ] || die "$ROOT_DEV has no guest agent in $AGENT_PATH"
}

# udev is absent, so make the /dev/virtio-ports/<name> links it would make.
link_virtio_ports() {
    tries=0
    for port in /sys/class/virtio-ports/*; do
        [ -e "$port/name" ] || continue
        name=""
        read -r name <"$port/name" || true
        while [ -z "$name" ] && [ "$tries" -lt "$PORT_NAME_WAIT_TENTHS" ]; do
            tries=$((tries + 1))
            sleep 0.1
            read -r name <"$port/name" || true
        done
        [ -n "$name" ] && ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
    done
}

# Every directory init needs from here on, in one process.
make_directories() {
    mkdir -p "$NEWROOT/dev" "$NEWROOT/proc" "$NEWROOT/sys" "$NEWROOT/run" "$NEWROOT/tmp" \
        /dev/pts /dev/shm /dev/virtio-ports || die "cannot make the new root's mount points"
}

# The new root's filesystems, in mount order: the kernel's own moved over, then those only the
# new root has. The directories under /dev are made before /dev moves.
write_new_root_fstab() {
    printf '%s\n' \
        "/dev $NEWROOT/dev none move 0 0" \
        "/proc $NEWROOT/proc none move 0 0" \
        "/sys $NEWROOT/sys none move 0 0" \
        "devpts $NEWROOT/dev/pts devpts nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 0 0" \
        "shm $NEWROOT/dev/shm tmpfs nosuid,nodev,mode=1777 0 0" \
        "cgroup2 $NEWROOT/sys/fs/cgroup cgroup2 nosuid,nodev,noexec,nsdelegate 0 0" \
        "run $NEWROOT/run tmpfs nosuid,nodev,mode=0755 0 0" \
        "tmp $NEWROOT/tmp tmpfs nosuid,nodev,mode=1777 0 0" >"$NEW_ROOT_FSTAB"
}

# /dev's conveniences (fd, stdin, stdout, stderr) are symlinks the initramfs carries, copied in
# one process; the mounts are one `mount -a` (a process per mount or link costs ~10 ms each
# under emulation, and these sit between init and the agent).
prepare_new_root() {
    cp -a "$DEV_LINKS/." /dev/ || die "cannot link /dev/fd and the standard streams"
    write_new_root_fstab
    mount -a -T "$NEW_ROOT_FSTAB" || die "cannot mount the new root's filesystems (see above)"
}

# Containers get cgroup controllers only if the root delegates them.
enable_cgroup_controllers() {
    cgroup=$NEWROOT/sys/fs/cgroup
    controllers=""
    read -r available <"$cgroup/cgroup.controllers" || true
    for controller in $available; do
        controllers="$controllers +$controller"
    done
    [ -z "$controllers" ] || echo "$controllers" >"$cgroup/cgroup.subtree_control" ||
        say "warning: could not enable cgroup controllers:$controllers"
}

# The agent replaces this shell as PID 1 of the new root (/proc is there now): a supervising shell there would cost
# the boot its own start (its binary is read and run afresh from the root disk). The new root
# is moved onto / before the chroot, as switch_root does, so that / of the mount namespace is the
# new root: runc's exec enters a container's mount namespace at that namespace's /. Unlike
# switch_root it leaves the initramfs's files (3.2 MiB of RAM, hidden under the new root) in
# place: deleting them first cost the agent's start 0.4-0.6 s under TCG (bench/guest_start.py).
start_agent() {
    echo vmsandbox >"$NEWROOT/proc/sys/kernel/hostname"
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
    stamp "$NEWROOT"
    say "stage=agent uptime=$UPTIME"
    cd "$NEWROOT" || die "cannot enter $NEWROOT"
    mount --move . / || die "cannot move the new root onto /"
    exec chroot . "$PYTHON" -I -S -u -c "$AGENT_MAIN" serve --listen "$LISTEN" \
        --state-dir "$AGENT_STATE_DIR" --init-uptime "$INIT_UPTIME"
}

mount_kernel_filesystems
stamp
INIT_UPTIME=$UPTIME
say "stage=init uptime=$INIT_UPTIME"
load_modules
stamp
say "stage=modules loaded=${LOADED:-none} uptime=$UPTIME"
configure_network
wait_for_root_disk
mount_root
make_directories
link_virtio_ports
write_resolv_conf
stamp
say "stage=rootfs device=$ROOT_DEV read_ahead_kb=$ROOT_READ_AHEAD uptime=$UPTIME"
prepare_new_root
enable_cgroup_controllers
start_agent
die "cannot start the guest agent"
