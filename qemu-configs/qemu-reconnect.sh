#!/usr/bin/env bash
# qemu-reconnect.sh: a VM that survives a restart of its vhost-user-blk backend.
#
# With reconnect=N on the socket chardev, QEMU treats a closed vhost-user
# connection as temporary: it stops the device's vhost side, retries the
# socket every N seconds, and when the backend listens again it renegotiates
# (features, memory table, vrings) and resumes the queues. The guest sees
# stalled I/O during the gap, not an error. Use it to upgrade or restart the
# backend under a running VM.
#
# What makes it lossless: when the connection drops, QEMU cannot ask the dead
# backend where it stopped, so it resumes the rings from the used index.
# Requests the old backend had taken but not completed are then either lost
# or, after out-of-order completions, replayed. Two ways out:
#   - the backend supports VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: QEMU keeps an
#     in-flight log in shared memory and hands it to the new process, which
#     resubmits exactly the unfinished requests (covers crashes too);
#   - the backend stops taking requests and completes those in flight before
#     it closes the socket (ours does on SIGTERM): used index == taken, so
#     the new process picks up exactly the requests nobody took.
# A crash of a backend without the in-flight log can hang the guest's I/O.
# Ours does both, so even kill -KILL is lossless (ARCHITECTURE.md, "Surviving
# a crash"; scripts/e2e.sh kills it mid-fio several times and verifies).
#
#   vhost-user-blk --socket /run/vhost-user-blk/vm0.sock --backing disk.raw --queues 2 &
#   SOCK=/run/vhost-user-blk/vm0.sock ./qemu-reconnect.sh
#   # later: kill -TERM (or -KILL) <backend>; start it again with the same arguments
#
# Note: QEMU 7.2 spells the option reconnect=SECONDS; QEMU 9.2 adds
# reconnect-ms=MILLISECONDS and deprecates reconnect (later releases remove it).
#
# Environment as in qemu-memfd.sh (SOCK required, QUEUES, QUEUE_SIZE, MEM,
# SMP, ACCEL, KERNEL, INITRD, APPEND, QEMU, DRY_RUN), plus
#   RECONNECT   seconds between reconnection attempts (default 1)
set -euo pipefail

: "${SOCK:?set SOCK to the vhost-user socket of the backend}"
QUEUES=${QUEUES:-2}
MEM=${MEM:-1G}
SMP=${SMP:-2}
ACCEL=${ACCEL:-tcg}
QEMU=${QEMU:-qemu-system-x86_64}
RECONNECT=${RECONNECT:-1}

case $ACCEL in
    kvm) accel=(-accel kvm -cpu host) ;;
    tcg) accel=(-accel "tcg,thread=multi" -cpu max) ;;
    *) echo "ACCEL must be kvm or tcg" >&2; exit 2 ;;
esac

args=(
    -name vhost-user-blk-reconnect
    -nodefaults
    "${accel[@]}"
    -smp "$SMP"
    # The memfd stays with QEMU across backend restarts; each new backend
    # process gets its fd again in VHOST_USER_SET_MEM_TABLE.
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -machine "q35,memory-backend=mem"
    -m "$MEM"
    # reconnect: at start-up QEMU still waits until the backend is there
    # (the device needs its config space), afterwards it retries on loss.
    -chardev "socket,id=vub0,path=$SOCK,reconnect=$RECONNECT"
    -device "vhost-user-blk-pci,chardev=vub0,num-queues=$QUEUES${QUEUE_SIZE:+,queue-size=$QUEUE_SIZE},bootindex=1"
    -serial mon:stdio
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
