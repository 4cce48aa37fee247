#!/usr/bin/env bash
# qemu-memfd.sh: a QEMU VM whose disk is served by a vhost-user-blk backend,
# with guest RAM in a memfd (the simplest shareable memory; no host setup).
#
# Start the backend on the disk image first (QEMU 7.2 connects once, at
# start-up, so it must already listen), e.g.
#   vhost-user-blk --socket /run/vhost-user-blk/vm0.sock --backing disk.raw --queues 2
# then either boot the image itself through the firmware:
#   SOCK=/run/vhost-user-blk/vm0.sock ./qemu-memfd.sh
# or boot a kernel directly, with the image as /dev/vda:
#   SOCK=... KERNEL=vmlinuz INITRD=initrd.img APPEND='root=/dev/vda1 console=ttyS0' ./qemu-memfd.sh
#
# Environment:
#   SOCK        backend socket (required)
#   QUEUES      virtqueues (default 2; at most the backend's --queues; the
#               guest uses at most one per vCPU)
#   QUEUE_SIZE  ring size (default: QEMU's 128; up to the backend's
#               --queue-size)
#   MEM         guest RAM (default 1G)      SMP  vCPUs (default 2)
#   ACCEL       kvm or tcg (default tcg: works everywhere, including nested
#               hosts whose /dev/kvm cannot run a stock kernel; use kvm on
#               real hosts)
#   KERNEL, INITRD, APPEND   direct kernel boot (optional)
#   QEMU        binary (default qemu-system-x86_64)
#   DRY_RUN=1   print the command line instead of running it
# The console is the serial port on stdio (Ctrl-A X quits QEMU).
set -euo pipefail

: "${SOCK:?set SOCK to the vhost-user socket of the backend}"
QUEUES=${QUEUES:-2}
MEM=${MEM:-1G}
SMP=${SMP:-2}
ACCEL=${ACCEL:-tcg}
QEMU=${QEMU:-qemu-system-x86_64}

case $ACCEL in
    kvm) accel=(-accel kvm -cpu host) ;;
    tcg) accel=(-accel "tcg,thread=multi" -cpu max) ;; # one host thread per vCPU
    *) echo "ACCEL must be kvm or tcg" >&2; exit 2 ;;
esac

args=(
    -name vhost-user-blk-memfd
    -nodefaults # no default NIC/VGA/…: only what is listed here (add a -nic for networking)
    "${accel[@]}"
    -smp "$SMP"
    # vhost-user requires guest RAM the backend can map: share=on makes the
    # memfd MAP_SHARED, and QEMU sends its fd to the backend
    # (VHOST_USER_SET_MEM_TABLE). The machine's RAM must be this object, so
    # memory-backend=mem and -m must name the same size.
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -machine "q35,memory-backend=mem"
    -m "$MEM"
    # The vhost-user control channel.
    -chardev "socket,id=vub0,path=$SOCK"
    # A virtio-blk PCI device whose data path is the backend. bootindex lets
    # the firmware boot from it.
    -device "vhost-user-blk-pci,chardev=vub0,num-queues=$QUEUES${QUEUE_SIZE:+,queue-size=$QUEUE_SIZE},bootindex=1"
    -serial mon:stdio # serial console and monitor multiplexed on the terminal
    -display none
)
if [[ -n ${KERNEL:-} ]]; then
    args+=(-kernel "$KERNEL" -append "${APPEND:-console=ttyS0}")
    [[ -n ${INITRD:-} ]] && args+=(-initrd "$INITRD")
fi

if [[ ${DRY_RUN:-0} == 1 ]]; then
    # Shell-quoted only where needed, so the line can be pasted.
    for a in "$QEMU" "${args[@]}"; do
        if [[ $a =~ ^[A-Za-z0-9_,=:/.+@%-]+$ ]]; then printf '%s ' "$a"; else printf '%q ' "$a"; fi
    done
    echo
    exit 0
fi
exec "$QEMU" "${args[@]}"
