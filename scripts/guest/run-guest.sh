#!/usr/bin/env bash
# run-guest.sh: boot the test guest against a vhost-user-blk socket and report.
#
# Usage:
#   run-guest.sh --socket SOCK --queues N [--mode full|readback|bench]
#                [--capacity-sectors N] [--serial S] [--expect-sha256 H]
#                [--memory memfd|hugepages] [--mem-size 512M] [--smp 2]
#                [--timeout 300] [--log FILE] [--artifacts DIR]
#                [--accel tcg|kvm] [--device-opts OPTS] [--reconnect SECS]
#                [--guest-param KEY=VALUE]... [--boots N] [--qmp SOCK]
#                [--qemu-log FILE]
#
# --guest-param KEY=VALUE: passes vtest.KEY=VALUE to the guest's /init, e.g.
# --guest-param bench_rw=randwrite (see scripts/guest/init.sh for the keys).
# Repeatable.
#
# --reconnect SECS: QEMU retries the socket every SECS seconds when the backend
# goes away, so the backend can be restarted under the running guest.
#
# --boots N: the guest is expected to boot N times in this one QEMU process
# (mode reset: a reboot or system reset, then a second boot). With N > 1 QEMU
# runs without -no-reboot, so a reset boots again instead of ending QEMU; the
# guest's last boot ends it by powering off. Default 1.
#
# --qmp SOCK: a QMP monitor on the Unix socket SOCK (QEMU listens, removes it
# when it exits), e.g. for scripts/guest/qmp.py SOCK system_reset.
#
# --qemu-log FILE: keep QEMU's stderr in FILE (else it is shown only on failure).
#
# The backend must already listen on SOCK: QEMU 7.2 connects once, at start-up.
# The guest (scripts/guest/init.sh) runs the tests and powers off; this script
# prints its VTEST-RESULT (and VTEST-BENCH) lines and, on stdout,
#   persist_sha256=<hex>
#   run-guest: PASS|FAIL <summary>
# Exit status: 0 only if every check passed, the guest booted --boots times and
# reached VTEST-END once, after its last boot, and the kernel printed no disk
# error, hung task or oops on the console.
#
# Default accelerator is TCG: on this project's CI machines /dev/kvm is a
# nested PVM hypervisor that hangs stock kernels. Pass --accel kvm on real KVM
# hosts to go much faster.
set -euo pipefail

VTEST_PROG=run-guest
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT=$(repo_root)

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit "$1"; }

SOCK='' QUEUES='' MODE=full CAPACITY='' SERIAL='' EXPECT_SHA=''
BOOTS=1 QMP='' QEMU_LOG=''
MEMORY=memfd
MEM_SIZE=512M   # guest RAM: ~90 MiB unpacked initramfs + test files in tmpfs, with room to spare
SMP=2           # two vCPUs so that two queues are both driven (one per CPU)
TIMEOUT=300     # seconds; a full run takes ~1 min under TCG, so this only trips on hangs
LOG='' ARTDIR=$ROOT/.guest ACCEL=tcg DEVICE_OPTS='' RECONNECT=''
HUGEPAGE_PATH=/dev/hugepages
GUEST_PARAMS=()

while (($#)); do
    [[ $1 == -h || $1 == --help ]] && usage 0
    (($# >= 2)) || die "$1 needs a value (see --help)"
    case $1 in
        --socket) SOCK=$2 ;;
        --queues) QUEUES=$2 ;;
        --mode) MODE=$2 ;;
        --capacity-sectors) CAPACITY=$2 ;;
        --serial) SERIAL=$2 ;;
        --expect-sha256) EXPECT_SHA=$2 ;;
        --memory) MEMORY=$2 ;;
        --mem-size) MEM_SIZE=$2 ;;
        --smp) SMP=$2 ;;
        --timeout) TIMEOUT=$2 ;;
        --log) LOG=$2 ;;
        --artifacts) ARTDIR=$2 ;;
        --accel) ACCEL=$2 ;;
        --device-opts) DEVICE_OPTS=$2 ;;
        --hugepage-path) HUGEPAGE_PATH=$2 ;;
        --reconnect) RECONNECT=$2 ;;
        --boots) BOOTS=$2 ;;
        --qmp) QMP=$2 ;;
        --qemu-log) QEMU_LOG=$2 ;;
        --guest-param)
            # Lower-case keys only, like init.sh's; the kernel command line
            # splits on spaces, so values must not contain any.
            [[ $2 =~ ^[a-z][a-z0-9_]*=[^[:space:]]*$ ]] || die "--guest-param must be KEY=VALUE without spaces, got: $2"
            GUEST_PARAMS+=("vtest.$2")
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift 2
done

[[ -n $SOCK ]] || die "--socket is required"
[[ $QUEUES =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
[[ $MODE =~ ^(full|readback|bench|reset|rounds)$ ]] || die "--mode must be full, readback, bench, reset or rounds"
[[ $BOOTS =~ ^[1-9][0-9]*$ ]] || die "--boots must be a positive integer"
[[ $SMP =~ ^[1-9][0-9]*$ ]] || die "--smp must be a positive integer"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout must be seconds"
[[ -z $CAPACITY || $CAPACITY =~ ^[0-9]+$ ]] || die "--capacity-sectors must be a number"
[[ -z $RECONNECT || $RECONNECT =~ ^[1-9][0-9]*$ ]] || die "--reconnect must be seconds"
[[ -z $EXPECT_SHA || $EXPECT_SHA =~ ^[0-9a-f]{64}$ ]] || die "--expect-sha256 must be 64 hex digits"
# The kernel command line splits on spaces, and init reads values verbatim.
[[ $SERIAL != *[[:space:]]* ]] || die "--serial must not contain spaces"
[[ -S $SOCK ]] || die "$SOCK is not a socket (is the backend running?)"

ensure_packages qemu-system-x86 coreutils

# Cached: costs a few hashes when nothing changed.
ART=$("$ROOT/scripts/guest/build-artifacts.sh" "$ARTDIR")
VMLINUX=$(sed -n 's/^vmlinux=//p' <<<"$ART")
INITRD=$(sed -n 's/^initrd=//p' <<<"$ART")

# Memory size in MiB, to check hugepage availability.
mem_mib() {
    local s=$1
    case $s in
        *G) echo $((${s%G} * 1024)) ;;
        *M) echo $((${s%M})) ;;
        *) die "--mem-size must look like 512M or 1G" ;;
    esac
}
MEM_MIB=$(mem_mib "$MEM_SIZE")

case $MEMORY in
    memfd)
        # share=on: the backend mmaps guest RAM through the fds QEMU sends it.
        MEMOBJ="memory-backend-memfd,id=mem,size=$MEM_SIZE,share=on"
        ;;
    hugepages)
        [[ $(stat -f -c %T "$HUGEPAGE_PATH" 2>/dev/null) == hugetlbfs ]] ||
            die "$HUGEPAGE_PATH is not a hugetlbfs mount (see qemu-configs/setup-hugepages.sh)"
        # 2 MiB pages: the default hugepage size on x86-64.
        free_pages=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
        ((MEM_MIB % 2 == 0)) || die "--mem-size must be a multiple of 2M for hugepages"
        ((free_pages * 2 >= MEM_MIB)) ||
            die "need $((MEM_MIB / 2)) free 2 MiB hugepages, have $free_pages (see qemu-configs/setup-hugepages.sh)"
        # mem-path is a directory: QEMU creates an unlinked file there, so
        # nothing is left behind. prealloc: fail now, not at a guest page fault.
        MEMOBJ="memory-backend-file,id=mem,size=$MEM_SIZE,mem-path=$HUGEPAGE_PATH,share=on,prealloc=on"
        ;;
    *) die "--memory must be memfd or hugepages" ;;
esac

case $ACCEL in
    tcg) ACCEL_ARGS=(-accel "tcg,thread=multi" -cpu max) ;;
    kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
    *) die "--accel must be tcg or kvm" ;;
esac

# The guest can use at most one queue per vCPU (virtio_blk caps the number of
# queues at the number of CPUs), so that is what it should see.
EXPECT_QUEUES=$((QUEUES < SMP ? QUEUES : SMP))

# loglevel=4: only kernel warnings and errors on the console, so the VTEST
# lines stay readable but I/O errors still show.
APPEND="console=ttyS0 panic=-1 loglevel=4 vtest.mode=$MODE vtest.queues=$EXPECT_QUEUES"
[[ -n $CAPACITY ]] && APPEND+=" vtest.capacity_sectors=$CAPACITY"
[[ -n $SERIAL ]] && APPEND+=" vtest.serial=$SERIAL"
[[ -n $EXPECT_SHA ]] && APPEND+=" vtest.expect_sha256=$EXPECT_SHA"
((${#GUEST_PARAMS[@]})) && APPEND+=" ${GUEST_PARAMS[*]}"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/run-guest.XXXXXX")
# Without --log the serial log lives (and dies) in TMP; its tail is printed
# on failure either way.
if [[ -z $LOG ]]; then
    LOG=$TMP/serial.log
else
    : >"$LOG"
fi
QEMU_ERR=${QEMU_LOG:-$TMP/qemu.stderr}
QPID=

cleanup() {
    local rc=$?
    # A second INT or TERM (timeout(1) and a terminal signal the whole group)
    # must not cut the clean-up short.
    trap '' INT TERM
    if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
        # timeout(1) passes TERM on to QEMU and reaps it.
        kill -TERM "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
# A TERM while the guest runs (a caller that gave up on it) stops QEMU, and
# what the guest did until then is still parsed and reported.
STOPPED=0
on_term() {
    [[ -n $QPID ]] || exit 143
    STOPPED=1
    kill -TERM "$QPID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap on_term TERM

DEVICE="vhost-user-blk-pci,chardev=c0,num-queues=$QUEUES${DEVICE_OPTS:+,$DEVICE_OPTS}"
QEMU_ARGS=(
    -name vtest -nodefaults -no-user-config
    "${ACCEL_ARGS[@]}"
    -machine "q35,memory-backend=mem" -smp "$SMP" -m "$MEM_SIZE"
    -object "$MEMOBJ"
    -chardev "socket,id=c0,path=$SOCK${RECONNECT:+,reconnect=$RECONNECT}"
    -device "$DEVICE"
    -kernel "$VMLINUX" -initrd "$INITRD" -append "$APPEND"
    -chardev "file,id=s0,path=$LOG" -serial chardev:s0
    -display none -monitor none
)
# One boot: a reboot (or a kernel panic, panic=-1) ends QEMU instead.
((BOOTS == 1)) && QEMU_ARGS+=(-no-reboot)
[[ -n $QMP ]] && QEMU_ARGS+=(-qmp "unix:$QMP,server=on,wait=off")

log "booting: mode=$MODE queues=$QUEUES memory=$MEMORY/$MEM_SIZE accel=$ACCEL boots=$BOOTS timeout=${TIMEOUT}s"
START=$SECONDS
# In the background so that a TERM/INT to this script runs the trap at once
# (bash defers traps while a foreground child runs). --kill-after: QEMU gets
# 10 s to exit after TERM before it is killed.
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 "${QEMU_ARGS[@]}" </dev/null >"$QEMU_ERR" 2>&1 &
QPID=$!
qrc=0
wait "$QPID" || qrc=$?
# The TERM trap interrupts the wait; QEMU is on its way down.
while ((STOPPED)) && kill -0 "$QPID" 2>/dev/null; do
    qrc=0
    wait "$QPID" 2>/dev/null || qrc=$?
done
QPID=
DUR=$((SECONDS - START))

# The serial console turns \n into \r\n.
CLEAN=$TMP/clean.log
tr -d '\r' <"$LOG" >"$CLEAN"

problems=()
((STOPPED)) && problems+=("stopped by the caller (SIGTERM) after ${DUR}s")
((qrc == 124 || qrc == 137)) && problems+=("timeout after ${TIMEOUT}s")
((qrc != 0 && qrc != 124 && qrc != 137)) && problems+=("qemu exited with $qrc")
nbegin=$(grep -ac '^VTEST-BEGIN' "$CLEAN" || true)
nend=$(grep -ac '^VTEST-END' "$CLEAN" || true)
((nbegin == 0)) && problems+=("guest /init never started")
((nbegin > 0 && nbegin != BOOTS)) && problems+=("$nbegin boots, expected $BOOTS")
((nend == 0)) && problems+=("no VTEST-END")
((nend > 1)) && problems+=("$nend VTEST-END lines, expected 1")
# The one VTEST-END must come from the last boot.
if ((nend == 1)) && [[ $(grep -a '^VTEST-\(BEGIN\|END\)' "$CLEAN" | tail -n 1) != VTEST-END* ]]; then
    problems+=("VTEST-END before the last boot")
fi
# With loglevel=4 the console shows the kernel's errors: failed disk
# requests, a task stuck on a request that never completes, an oops, a used
# ring the device got wrong (virtio_ring's "is not a head", "out of range").
kerr=$(grep -ac 'I/O error\|blocked for more than\|Call Trace\|BUG:\|Oops\|is not a head\|out of range' "$CLEAN" || true)
((kerr > 0)) && problems+=("$kerr kernel error lines on the console")

# grep -a: a kernel message could put odd bytes into the log.
grep -a '^VTEST-\(RESULT\|INFO\|BENCH\) ' "$CLEAN" || true
npass=$(grep -ac '^VTEST-RESULT [^ ]* PASS' "$CLEAN" || true)
nfail=$(grep -ac '^VTEST-RESULT [^ ]* FAIL' "$CLEAN" || true)
((nfail > 0)) && problems+=("$nfail checks failed")
((npass + nfail == 0)) && problems+=("no results")

sha=$(sed -n 's/^VTEST-PERSIST \([0-9a-f]\{64\}\)$/\1/p' "$CLEAN" | tail -n 1)
[[ -n $sha ]] && echo "persist_sha256=$sha"
[[ -z $sha && $MODE == full ]] && problems+=("no VTEST-PERSIST line")

if ((${#problems[@]})); then
    log "serial log tail:"
    tail -n 40 "$CLEAN" | sed 's/^/  | /' >&2
    [[ -s $QEMU_ERR ]] && { log "qemu stderr:"; sed 's/^/  | /' "$QEMU_ERR" >&2; }
    summary=$(printf '%s; ' "${problems[@]}")
    echo "run-guest: FAIL mode=$MODE queues=$QUEUES ${DUR}s: ${summary%; }"
    exit 1
fi
echo "run-guest: PASS mode=$MODE queues=$QUEUES$( ((BOOTS > 1)) && echo " boots=$BOOTS") $npass checks ${DUR}s"
