#!/bin/busybox sh
# PID 1 of the vmsandbox guest after switch_root: runs the guest agent and powers the VM off
# when it exits, so the agent's lifetime is the VM's lifetime and the host sees why it ended.
# The agent listens on "auto" (the named virtio-serial port, else vsock) unless the kernel
# command line says otherwise with vmsandbox.listen=SPEC (same syntax as --listen).
# Its one argument, from /init, is the guest uptime at which /init began.
#
# The interpreter starts isolated and without site packages (-I -S): the agent is standard
# library only and lives, byte-compiled, in AGENT_PATH, the one directory added to sys.path.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8

INIT_UPTIME=${1:-}
AGENT_PATH=/usr/lib/vmsandbox/python
AGENT_MAIN="import sys; sys.path.insert(0, '$AGENT_PATH'); from vmsandbox.guest.__main__ import main; sys.exit(main())"

STATE_DIR=/run/vmsandbox-guest
LISTEN=auto

say() {
    echo "vmsandbox-init: $*"
}

# Shell builtins only on the way to the agent: under emulation every fork+exec is costly.
stamp() {
    read -r UPTIME _ </proc/uptime
}

# Containers get cgroup controllers only if the root delegates them.
enable_cgroup_controllers() {
    controllers=""
    read -r available </sys/fs/cgroup/cgroup.controllers || true
    for controller in $available; do
        controllers="$controllers +$controller"
    done
    [ -z "$controllers" ] || echo "$controllers" >/sys/fs/cgroup/cgroup.subtree_control ||
        say "warning: could not enable cgroup controllers:$controllers"
}

read_cmdline() {
    read -r cmdline </proc/cmdline
    for arg in $cmdline; do
        case "$arg" in
        vmsandbox.listen=*) LISTEN="${arg#vmsandbox.listen=}" ;;
        esac
    done
}

read_cmdline
echo vmsandbox >/proc/sys/kernel/hostname
enable_cgroup_controllers
stamp
say "stage=agent uptime=$UPTIME"
python3 -I -S -u -c "$AGENT_MAIN" serve --listen "$LISTEN" --state-dir "$STATE_DIR" \
    ${INIT_UPTIME:+--init-uptime "$INIT_UPTIME"} &
agent=$!
wait "$agent"
status=$?
if [ "$status" -gt 128 ]; then
    reason="killed by signal $((status - 128))"
else
    reason="exited with status $status"
fi
say "guest agent $reason; powering off"
sync
busybox poweroff -f
sleep 5
