#!/usr/bin/env bash
# qemu-hugepages.sh: like qemu-memfd.sh, but guest RAM on hugepages.
#
# Why: the backend translates guest addresses and touches guest buffers on
# every request; hugepage-backed RAM means far fewer TLB misses for it (and
# for the guest), and it is what production vhost-user setups use.
#
# Reserve the pages first (2 MiB pages, mounted at /dev/hugepages):
#   ./setup-hugepages.sh 512          # 512 x 2 MiB = 1 GiB, the default MEM
#   SOCK=/run/vhost-user-blk/vm0.sock ./qemu-hugepages.sh
#   ./setup-hugepages.sh --release    # afterwards
#
# Two ways to get hugepage memory QEMU can share with the backend:
#   HUGE_BACKEND=file   (default) memory-backend-file on a hugetlbfs mount:
#                       mem-path is a directory, QEMU creates and unlinks a
#                       file there; the backend gets that file's fd.
#   HUGE_BACKEND=memfd  memory-backend-memfd,hugetlb=on: no mount needed, only
#                       reserved pages of the chosen size.
# Page size (HUGEPAGE_SIZE):
#   2M  (default) reserve at run time: setup-hugepages.sh, or
#       echo N > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
#   1G  fewer TLB entries still, but 1 GiB pages usually must be reserved at
#       boot (kernel command line: default_hugepagesz=1G hugepagesz=1G
#       hugepages=N) because free 1 GiB contiguous runs are rare later; the
#       file variant then needs a mount with pagesize=1G, given as
#       HUGEPAGE_PATH (e.g. mount -t hugetlbfs -o pagesize=1G none /dev/hugepages1G).
#       MEM must be a multiple of the page size.
#
# Other environment as in qemu-memfd.sh: SOCK (required), QUEUES, QUEUE_SIZE,
# MEM (default 1G), SMP, ACCEL, KERNEL, INITRD, APPEND, QEMU, DRY_RUN.
set -euo pipefail

: "${SOCK:?set SOCK to the vhost-user socket of the backend}"
QUEUES=${QUEUES:-2}
MEM=${MEM:-1G}
SMP=${SMP:-2}
ACCEL=${ACCEL:-tcg}
QEMU=${QEMU:-qemu-system-x86_64}
HUGE_BACKEND=${HUGE_BACKEND:-file}
HUGEPAGE_SIZE=${HUGEPAGE_SIZE:-2M}
HUGEPAGE_PATH=${HUGEPAGE_PATH:-/dev/hugepages}

case $HUGEPAGE_SIZE in
    2M) kib=2048 ;;
    1G) kib=1048576 ;;
    *) echo "HUGEPAGE_SIZE must be 2M or 1G" >&2; exit 2 ;;
esac
# Fail with a hint instead of QEMU's terse mmap error when pages are missing.
free=$(cat "/sys/kernel/mm/hugepages/hugepages-${kib}kB/free_hugepages" 2>/dev/null || echo 0)
case $MEM in
    *G) need_kib=$((${MEM%G} * 1048576)) ;;
    *M) need_kib=$((${MEM%M} * 1024)) ;;
    *) echo "MEM must look like 1G or 512M" >&2; exit 2 ;;
esac
if ((free * kib < need_kib)); then
    echo "need $((need_kib / kib)) free $HUGEPAGE_SIZE hugepages, have $free (see setup-hugepages.sh)" >&2
    [[ ${DRY_RUN:-0} == 1 ]] || exit 1
fi

case $HUGE_BACKEND in
    # share=on: MAP_SHARED, so the backend's mapping sees the guest's writes.
    # prealloc=on: take all pages now; a shortage then fails at start-up
    # instead of killing the VM (SIGBUS) at some later guest page fault.
    file) memobj="memory-backend-file,id=mem,size=$MEM,mem-path=$HUGEPAGE_PATH,share=on,prealloc=on" ;;
    memfd) memobj="memory-backend-memfd,id=mem,size=$MEM,hugetlb=on,hugetlbsize=$HUGEPAGE_SIZE,share=on,prealloc=on" ;;
    *) echo "HUGE_BACKEND must be file or memfd" >&2; exit 2 ;;
esac

case $ACCEL in
    kvm) accel=(-accel kvm -cpu host) ;;
    tcg) accel=(-accel "tcg,thread=multi" -cpu max) ;;
    *) echo "ACCEL must be kvm or tcg" >&2; exit 2 ;;
esac

args=(
    -name vhost-user-blk-hugepages
    -nodefaults
    "${accel[@]}"
    -smp "$SMP"
    -object "$memobj"
    -machine "q35,memory-backend=mem"
    -m "$MEM"
    -chardev "socket,id=vub0,path=$SOCK"
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
