#!/usr/bin/env bash
# setup-hugepages.sh [N]        reserve N more 2 MiB hugepages (default 256)
#                               and make sure hugetlbfs is mounted at
#                               /dev/hugepages
# setup-hugepages.sh --release  give back exactly what the earlier call took
#
# Why: vhost-user needs guest RAM the backend can mmap; hugetlbfs-backed RAM
# (qemu-hugepages.sh, run-guest.sh --memory hugepages) also cuts TLB misses
# when the backend touches guest buffers. The default N=256 is 512 MiB, the
# guest RAM size run-guest.sh uses.
#
# Idempotent, and safe next to other users of hugepages: a state file records
# how many pages this caller added and whether it mounted hugetlbfs. Calling
# again with the same N changes nothing; --release subtracts the pages it
# added (not "reset to the old total", which would take pages from whoever
# reserved some in between), unmounts only a mount it made, and is a no-op
# without a state file.
#
# Environment:
#   HUGEPAGES_STATE  state file (default /run/vhost-user-blk-hugepages.state);
#                    give each concurrent user its own
#   HUGEPAGES_MNT    hugetlbfs mount point (default /dev/hugepages)
# Needs root.
set -euo pipefail

# 2 MiB is the default (and always available) hugepage size on x86-64; the
# per-size sysfs knob is used so the size is explicit rather than "default".
NR=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
MNT=${HUGEPAGES_MNT:-/dev/hugepages}
STATE=${HUGEPAGES_STATE:-/run/vhost-user-blk-hugepages.state}

log() { printf 'setup-hugepages: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root"
[[ -w $NR ]] || die "$NR not writable (no hugetlb support?)"

is_hugetlbfs() { [[ $(stat -f -c %T "$MNT" 2>/dev/null) == hugetlbfs ]]; }

# State: reserved=<pages this caller added> mounted=<0|1> created=<0|1>
reserved=0 mounted=0 created=0
load_state() {
    [[ -f $STATE ]] || return 1
    # Only the three known keys are read; the file is never sourced.
    local k v
    while IFS='=' read -r k v; do
        [[ $v =~ ^[0-9]+$ ]] || continue
        case $k in
            reserved) reserved=$v ;;
            mounted) mounted=$v ;;
            created) created=$v ;;
        esac
    done <"$STATE"
}
save_state() {
    printf 'reserved=%s\nmounted=%s\ncreated=%s\n' "$reserved" "$mounted" "$created" >"$STATE"
}

# add_pages DELTA (may be negative): change the pool, never below 0.
add_pages() {
    local cur target
    cur=$(<"$NR")
    target=$((cur + $1))
    ((target < 0)) && target=0
    echo "$target" >"$NR"
}

release() {
    if ! load_state; then
        log "nothing to release"
        return 0
    fi
    # Pages still in use by a running VM stay allocated as "surplus" and are
    # freed by the kernel when that VM exits.
    add_pages $((-reserved))
    if ((mounted)) && is_hugetlbfs; then
        # Someone else may still use the mount; leave it then rather than fail.
        umount "$MNT" 2>/dev/null || log "warning: $MNT still in use, left mounted"
    fi
    # Only an empty directory this script created is removed.
    if ((created)); then rmdir "$MNT" 2>/dev/null || true; fi
    rm -f "$STATE"
    log "released $reserved x 2 MiB (pool now $(<"$NR"))"
}

setup() {
    local want=$1 before got
    load_state || true
    if ! is_hugetlbfs; then
        if [[ ! -d $MNT ]]; then
            mkdir -p "$MNT"
            created=1
        fi
        mount -t hugetlbfs -o pagesize=2M hugetlbfs "$MNT"
        mounted=1
    fi
    # Recorded before the pool grows, so a failure below can still be released.
    save_state
    before=$(<"$NR")
    add_pages $((want - reserved))
    got=$(<"$NR")
    if ((got < before + want - reserved)); then
        # Memory too fragmented for that many 2 MiB pages: give back what was
        # obtained so a failed setup leaves nothing reserved.
        reserved=$((reserved + got - before))
        save_state
        release
        die "could not reserve $want hugepages"
    fi
    reserved=$want
    save_state
    log "reserved $want x 2 MiB (pool now $got), hugetlbfs at $MNT"
}

case ${1:-256} in
    --release) release ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *[!0-9]* | '') die "usage: $0 [N] | --release" ;;
    *) setup "${1:-256}" ;;
esac
