# shellcheck shell=bash
# Helpers shared by the benchmark scripts (compare.sh, guest-fio-compare.sh, poll-cost.sh). Sourced
# after scripts/guest/lib.sh (log, die, stop_process); defines functions only.

# bench_cleanup_on_exit: every way out of a benchmark script (the end, a failed run, a signal) stops
# what it left running — the guest runner CPID (run-guest.sh stops its QEMU in its own trap) and the
# back-end BPID — removes WORK and prints the elapsed time. Sets T_START, WORK, BPID and CPID.
# shellcheck disable=SC2034 # WORK, BPID and CPID are set by the scripts that source this file
bench_cleanup_on_exit() {
    T_START=$SECONDS WORK='' BPID='' CPID=''
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# shellcheck disable=SC2317 # reached through the EXIT trap
bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CPID ]] && kill -0 "$CPID" 2>/dev/null; then
        kill -TERM "$CPID" 2>/dev/null || true
        wait "$CPID" 2>/dev/null || true
    fi
    [[ -n $BPID ]] && stop_process "$BPID"
    [[ -n ${LOOPDEV:-} ]] && losetup -d "$LOOPDEV"
    [[ -n ${LOOPIMG:-} ]] && rm -f "$LOOPIMG"
    [[ -n $WORK ]] && rm -rf "$WORK"
    log "elapsed $((SECONDS - T_START))s"
    exit "$rc"
}

# bench_workdir PREFIX: a fresh directory for one benchmark run in WORK, on a disk-backed file system
# (tmpfs has no O_DIRECT, which both back-ends use on the file store).
bench_workdir() {
    WORK=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/$1.XXXXXX")
    [[ $(stat -f -c %T "$WORK") != tmpfs ]] || die "BENCH_TMPDIR is tmpfs (no O_DIRECT); pick a disk-backed directory"
}

# bench_daemon ROOT WORK: builds the release daemon (incrementally: measuring a stale binary would
# be a silent error) and copies it to WORK/vhost-user-blk, so a rebuild of the checkout while the
# benchmark runs cannot change what is measured. Sets DAEMON, DAEMON_SHA (full sha256),
# DAEMON_MTIME (build time), GIT_COMMIT (HEAD of the checkout) and GIT_DIRTY (uncommitted changes
# under Sources/ or Package.swift). BENCH_SCRATCH_PATH (default .build) is the SwiftPM scratch path,
# for checkouts whose builds must stay out of .build (several engineers building on one machine).
# BENCH_DAEMON=PATH measures that binary instead of building one (a saved "before" build, say);
# GIT_COMMIT then still names the checkout, not the binary's source.
# shellcheck disable=SC2034 # the variables it sets are read by the scripts that source this file
bench_daemon() {
    local root=$1 work=$2
    if ! command -v swift >/dev/null && [[ -x /opt/swift/usr/bin/swift ]]; then PATH=/opt/swift/usr/bin:$PATH; fi
    command -v swift >/dev/null || die "swift not found: it builds the daemon under test"
    local built=${BENCH_DAEMON:-}
    if [[ -z $built ]]; then
        local scratch=${BENCH_SCRATCH_PATH:-.build}
        log "building the release daemon (scratch path $scratch)"
        (cd "$root" && swift build -c release --scratch-path "$scratch" --product vhost-user-blk >&2)
        built=$root/$scratch/release/vhost-user-blk
    fi
    [[ -x $built ]] || die "no daemon binary at $built"
    DAEMON=$work/vhost-user-blk
    cp "$built" "$DAEMON"
    DAEMON_SHA=$(sha256sum "$DAEMON" | cut -d' ' -f1)
    DAEMON_MTIME=$(date -u -r "$built" +%Y-%m-%dT%H:%M:%SZ)
    GIT_COMMIT=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    GIT_DIRTY=false
    if [[ -n $(git -C "$root" status --porcelain -- Sources Package.swift 2>/dev/null) ]]; then GIT_DIRTY=true; fi
}

# bench_image PATH MIB: a raw image whose every block is allocated and written. fallocate alone
# leaves "unwritten" extents: reads of them return zeroes without touching the disk (host fio reads
# them at > 1 M IOPS), and the first write to each converts it, a metadata cost only the first
# back-end to write would pay. Writing the whole image once makes every run see the same disk.
bench_image() {
    log "creating a $2 MiB image at $1"
    fallocate -l "$2M" "$1"
    dd if=/dev/zero of="$1" bs=1M count="$2" oflag=direct conv=notrunc,fsync status=none
}

# bench_loop_device MIB: a loop device (LOOPDEV) over a file of MIB MiB in /dev/shm (LOOPIMG), written
# in full so every page exists; bench_cleanup detaches and removes both. A memory-speed kernel block
# device: what a back-end adds shows without a disk's swings. Needs root and loop support.
# shellcheck disable=SC2034 # LOOPDEV is read by the scripts that source this file
bench_loop_device() {
    LOOPIMG=$(mktemp /dev/shm/vub-loop.XXXXXX)
    log "creating a $1 MiB loop device over $LOOPIMG"
    dd if=/dev/zero of="$LOOPIMG" bs=1M count="$1" status=none
    LOOPDEV=$(losetup --find --show "$LOOPIMG") || { LOOPDEV=''; die "losetup failed (the loop store needs root and loop devices)"; }
}
