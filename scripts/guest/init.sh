#!/bin/sh
# /init of the test guest (busybox ash). Built into the initramfs by
# build-artifacts.sh; never runs on the host.
#
# Reads vtest.* parameters from the kernel command line, tests /dev/vda (a
# virtio-blk disk served by the vhost-user backend under test) and prints one
# machine-readable line per check on the console (ttyS0):
#
#   VTEST-BEGIN
#   VTEST-INFO <key> <value...>            facts, never a failure
#   VTEST-RESULT <name> PASS|FAIL <detail>
#   VTEST-PERSIST <sha256>                 hash of the persistence region
#   VTEST-END fails=<n>
#
# and in bench mode also
#   VTEST-BENCH-START / VTEST-BENCH-STOP   printed right before / after fio, so
#                                          the host can attribute back-end CPU
#                                          time to the measured phase
#   VTEST-BENCH key=value...               the measurement (see test_bench)
#
# in reset mode
#   VTEST-RESET-READY                      first boot, vtest.reset_by=host: fio
#                                          writes are in flight, reset now
# and in rounds mode
#   VTEST-ROUND <r> writing                round r's fio writes are in flight
#
# then powers the VM off. run-guest.sh parses these lines.
#
# Parameters (all optional except where a mode needs them):
#   vtest.mode=full|readback|bench|reset|rounds  what to run (default full)
#   vtest.queues=N                expected number of blk-mq hardware queues
#   vtest.capacity_sectors=N      expected size in 512-byte sectors
#   vtest.serial=S                expected virtio-blk serial (GET_ID)
#   vtest.expect_sha256=H         readback: expected persistence hash
#   vtest.persist_offset_mb=N     persistence region offset (default 64)
#   vtest.bench_rw=randread|randwrite|read|write   bench: fio --rw (default randread)
#   vtest.bench_bs=4k             bench: fio --bs
#   vtest.bench_iodepth=32        bench: fio --iodepth (per job)
#   vtest.bench_runtime=15        bench: measured seconds, after the ramp
#   vtest.bench_ramp=2            bench: fio --ramp_time seconds (not measured)
#   vtest.bench_jobs=1            bench: fio --numjobs
#   vtest.reset_by=self|host      reset: who resets the VM during the first
#                                 boot's fio: the guest itself (sysrq b, an
#                                 immediate reboot) or the host (QMP
#                                 system_reset, after VTEST-RESET-READY)
#   vtest.boot_nonce=HEX          reset: tags the boot marker, so a marker left
#                                 on the image by an earlier run is not taken
#                                 for this run's first boot (required)
#   vtest.rounds=3                rounds: fio write+verify rounds
#
# bench overwrites the whole disk when bench_rw writes.
#
# reset (two boots of one QEMU process; QEMU runs without -no-reboot): the
# first boot finds no marker of this nonce, checks identity, writes the
# persistence region and the marker (boot 1 + the region's hash), starts fio
# random writes on every queue and, with writes in flight, the VM is reset.
# The second boot finds the marker, bumps it to 2 (a third boot would report
# a failure instead of looping), checks identity, that the persistence region
# kept its data, the fio write+verify of `full`, and the kernel log.
#
# rounds: vtest.rounds fio runs of random writes with crc32c verify (each
# writes then reads back the whole 96-128 MiB region, its own seed per round,
# so a write lost in round r cannot hide behind round r-1's identical data),
# with random reads of the 0-96 MiB region on the same queues alongside,
# announced by "VTEST-ROUND r writing" once writes are in flight, so the host
# can kill the back-end in the middle of each; then a separate verify-only
# pass of the last round and the kernel log check.
#
# Disk layout used by `full` (MiB; needs a disk of at least 96 MiB):
#   whole disk  ext4 test (first, since mkfs overwrites everything)
#   0-4         discard test          4-8   write-zeroes test
#   8-12        untouched neighbour of the two above, must keep its data
#   12-16       raw pattern, 1 MiB O_DIRECT writes
#   16-20       FLUSH test writes
#   32-64       fio verify region
#   64-72       persistence region (vtest.persist_offset_mb)
#   last 256 KiB, logical block 7: small/odd-placed raw writes
# reset uses 32-64 (fio), 64-72 (persistence) and 72 MiB + 4 KiB (the boot
# marker); rounds writes 96-128 and reads 0-96.
#
# No `set -e`: init must never die half-way (that panics the kernel and loses
# the report); every command's status is checked explicitly instead.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Debian's busybox ash prefers its own applets over PATH (FEATURE_PREFER_APPLETS),
# so the host tools copied in are called by absolute path: busybox's
# blkdiscard has no -z and its mke2fs cannot make ext4.
BLKDISCARD=/usr/sbin/blkdiscard
MKFS_EXT4=/usr/sbin/mkfs.ext4
E2FSCK=/usr/sbin/e2fsck
FIO=/usr/sbin/fio
DEV=/dev/vda
SYS=/sys/block/vda
MIB=1048576
FAILS=0

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

echo "VTEST-BEGIN"

info() { echo "VTEST-INFO $*"; }

# result NAME PASS|FAIL DETAIL...
result() {
    _n=$1
    _s=$2
    shift 2
    echo "VTEST-RESULT $_n $_s $*"
    [ "$_s" = PASS ] || FAILS=$((FAILS + 1))
}

# check NAME CONDITION_STATUS DETAIL...: PASS if the status is 0.
check() {
    _n=$1
    _rc=$2
    shift 2
    if [ "$_rc" -eq 0 ]; then result "$_n" PASS "$@"; else result "$_n" FAIL "$@"; fi
}

finish() {
    echo "VTEST-END fails=$FAILS"
    sync
    poweroff -f
    # poweroff -f does not return; if it somehow does, do not let init exit
    # (the kernel would panic and the log would end with a confusing trace).
    while :; do sleep 60; done
}

# Seconds since boot with centiseconds, for step timings.
now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2fs", b - a }'; }

# --- parameters ---------------------------------------------------------------
P_mode=full
P_queues=
P_capacity_sectors=
P_serial=
P_expect_sha256=
P_persist_offset_mb=64
P_bench_rw=randread
P_bench_bs=4k
P_bench_iodepth=32
P_bench_runtime=15
# 2 s: long enough for the queues to fill and the first-touch effects of the
# guest (page faults in fio's buffers, blk-mq tag allocation) to pass.
P_bench_ramp=2
P_bench_jobs=1
P_reset_by=self
P_boot_nonce=
P_rounds=3
# shellcheck disable=SC2013 # the command line is words, not lines
for arg in $(cat /proc/cmdline); do
    case $arg in
        vtest.mode=*) P_mode=${arg#*=} ;;
        vtest.queues=*) P_queues=${arg#*=} ;;
        vtest.capacity_sectors=*) P_capacity_sectors=${arg#*=} ;;
        vtest.serial=*) P_serial=${arg#*=} ;;
        vtest.expect_sha256=*) P_expect_sha256=${arg#*=} ;;
        vtest.persist_offset_mb=*) P_persist_offset_mb=${arg#*=} ;;
        vtest.bench_rw=*) P_bench_rw=${arg#*=} ;;
        vtest.bench_bs=*) P_bench_bs=${arg#*=} ;;
        vtest.bench_iodepth=*) P_bench_iodepth=${arg#*=} ;;
        vtest.bench_runtime=*) P_bench_runtime=${arg#*=} ;;
        vtest.bench_ramp=*) P_bench_ramp=${arg#*=} ;;
        vtest.bench_jobs=*) P_bench_jobs=${arg#*=} ;;
        vtest.reset_by=*) P_reset_by=${arg#*=} ;;
        vtest.boot_nonce=*) P_boot_nonce=${arg#*=} ;;
        vtest.rounds=*) P_rounds=${arg#*=} ;;
    esac
done
info kernel "$(uname -r)"
info mode "$P_mode"
info cpus "$(nproc)"

# --- modules and the disk -------------------------------------------------------
while read -r m; do
    insmod "/lib/modules/$m.ko" || result "insmod-$m" FAIL "insmod failed"
done </etc/vtest-modules

# The disk appears asynchronously after virtio_blk probes; poll for it with a
# bound (10 s: probing takes milliseconds, so this only trips when the device
# never shows up, e.g. the backend did not answer QEMU).
i=0
while [ ! -b $DEV ] && [ $i -lt 100 ]; do
    usleep 100000
    i=$((i + 1))
done
if [ ! -b $DEV ]; then
    result disk-present FAIL "no $DEV after 10s"
    finish
fi
result disk-present PASS "$DEV"

# Sizes and hashes used by several steps.
SECTORS=$(cat $SYS/size) # always in 512-byte units, whatever the block size
DISK_BYTES=$((SECTORS * 512))
LBS=$(cat $SYS/queue/logical_block_size)
ZERO4M=$(head -c $((4 * MIB)) /dev/zero | sha256sum | cut -d' ' -f1)

# sha of LEN bytes of the disk at byte offset OFF, read with O_DIRECT so the
# data comes from the backend rather than the page cache.
disk_sha() { # disk_sha OFF LEN (both multiples of 4096)
    dd if=$DEV bs=4096 iflag=direct,skip_bytes,count_bytes skip="$1" count="$2" 2>/dev/null |
        sha256sum | cut -d' ' -f1
}
file_sha() { sha256sum <"$1" | cut -d' ' -f1; }
# write FILE to the disk at byte offset OFF with O_DIRECT in BS-sized requests.
disk_write() { # disk_write FILE OFF BS [extra dd conv]
    dd if="$1" of=$DEV bs="$3" oflag=direct,seek_bytes seek="$2" ${4:+conv=$4} 2>/dev/null
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# /sys/block/vda/stat field N (Documentation/block/stat.rst): 12 = discard
# I/Os, 16 = flush I/Os completed.
stat_field() { awk -v f="$1" '{ print $f }' $SYS/stat; }

persist_region() {
    PERSIST_OFF=$((P_persist_offset_mb * MIB))
    PERSIST_LEN=$((8 * MIB))
}

# --- (a)-(c) identity -----------------------------------------------------------
test_identity() {
    if [ -n "$P_capacity_sectors" ]; then
        [ "$SECTORS" = "$P_capacity_sectors" ]
        check capacity $? "sectors=$SECTORS expected=$P_capacity_sectors"
    else
        info capacity_sectors "$SECTORS"
    fi

    # One directory per hardware queue.
    set -- $SYS/mq/*
    nq=$#
    NQ=$nq
    if [ -n "$P_queues" ]; then
        [ "$nq" = "$P_queues" ]
        check queues $? "hw_queues=$nq expected=$P_queues"
    else
        info hw_queues "$nq"
    fi

    # Reading the serial sends a VIRTIO_BLK_T_GET_ID request to the device.
    serial=$(cat $SYS/serial 2>/dev/null)
    rc=$?
    if [ -n "$P_serial" ]; then
        [ $rc -eq 0 ] && [ "$serial" = "$P_serial" ]
        check serial $? "serial=$serial expected=$P_serial"
    else
        info serial "rc=$rc $serial"
    fi

    for a in logical_block_size physical_block_size max_sectors_kb max_segments \
        discard_max_bytes discard_granularity write_zeroes_max_bytes write_cache \
        nr_requests rotational; do
        info "queue.$a" "$(cat $SYS/queue/$a 2>/dev/null)"
    done
}

# --- (e) ext4 ------------------------------------------------------------------
test_ext4() {
    t0=$(now)
    # lazy init off: otherwise a kernel thread keeps writing inode tables in
    # the background while later steps run.
    if ! out=$($MKFS_EXT4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 $DEV 2>&1); then
        result ext4-mkfs FAIL "$out"
        return
    fi
    result ext4-mkfs PASS "$(elapsed "$t0")"
    if ! mount -t ext4 $DEV /mnt; then
        result ext4-files FAIL "mount failed"
        return
    fi
    mkdir -p /mnt/d1/d2
    # Sizes straddle block boundaries (0, 1, 4095, 4096, 4097 bytes), plus
    # multi-extent files (1 and 3 MiB, 200 KiB + 7 bytes in a subdirectory).
    ok=0
    for spec in empty:0 one:1 b4095:4095 b4096:4096 b4097:4097 m1:$MIB \
        d1/d2/odd:$((200 * 1024 + 7)) m3:$((3 * MIB)); do
        head -c "${spec#*:}" /dev/urandom >"/mnt/${spec%%:*}" || ok=1
    done
    (cd /mnt && find . -type f ! -name lost+found | sort | xargs sha256sum) >/tmp/manifest || ok=1
    sync
    umount /mnt || ok=1
    check ext4-files $ok "$(wc -l </tmp/manifest) files written"

    drop_caches
    out=$($E2FSCK -fn $DEV 2>&1)
    check ext4-fsck $? "$(echo "$out" | tail -n 1)"

    drop_caches
    if ! mount -t ext4 $DEV /mnt; then
        result ext4-verify FAIL "remount failed"
        return
    fi
    out=$(cd /mnt && sha256sum -c /tmp/manifest 2>&1)
    rc=$?
    umount /mnt || rc=1
    check ext4-verify $rc "$(echo "$out" | grep -c ': OK') ok, total $(elapsed "$t0")"
}

# --- (d) raw patterns ----------------------------------------------------------
test_raw() {
    head -c $((4 * MIB)) /dev/urandom >/tmp/pat
    PAT=$(file_sha /tmp/pat)

    # 4 MiB in 1 MiB writes: large requests made of many segments (user pages
    # are rarely physically contiguous; seg_max bounds how many fit in one).
    disk_write /tmp/pat $((12 * MIB)) 1M
    rc=$?
    drop_caches
    got=$(disk_sha $((12 * MIB)) $((4 * MIB)))
    [ $rc -eq 0 ] && [ "$got" = "$PAT" ]
    check raw-1m $? "write_rc=$rc sha=$(echo "$got" | cut -c1-12)"

    # The last 256 KiB of the disk in 4 KiB requests: the capacity edge.
    head -c $((256 * 1024)) /tmp/pat >/tmp/pat256k
    off=$((DISK_BYTES - 256 * 1024))
    disk_write /tmp/pat256k $off 4k
    rc=$?
    drop_caches
    [ $rc -eq 0 ] && [ "$(disk_sha $off $((256 * 1024)))" = "$(file_sha /tmp/pat256k)" ]
    check raw-tail $? "offset=$off write_rc=$rc"

    # A single logical block at an odd place (block 7): with 512-byte blocks
    # a request smaller than a page that is not page aligned on the device.
    head -c "$LBS" /dev/urandom >/tmp/patblk
    dd if=/tmp/patblk of=$DEV bs="$LBS" seek=7 oflag=direct 2>/dev/null
    rc=$?
    drop_caches
    got=$(dd if=$DEV bs="$LBS" skip=7 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ $rc -eq 0 ] && [ "$got" = "$(file_sha /tmp/patblk)" ]
    check raw-sector $? "block_size=$LBS write_rc=$rc"

    # Beyond the last sector the device must refuse, not wrap: the kernel
    # stops at the capacity, so this reads 0 bytes.
    n=$(dd if=$DEV bs="$LBS" skip=$((DISK_BYTES / LBS)) count=1 iflag=direct 2>/dev/null | wc -c)
    [ "$n" -eq 0 ]
    check raw-eof $? "bytes_past_end=$n"
}

# --- (g) discard and write zeroes ---------------------------------------------------
test_discard() {
    for r in 0 4 8; do disk_write /tmp/pat $((r * MIB)) 1M; done
    d0=$(stat_field 12)
    out=$($BLKDISCARD -o 0 -l $((4 * MIB)) $DEV 2>&1)
    rc=$?
    d1=$(stat_field 12)
    drop_caches
    got=$(disk_sha 0 $((4 * MIB)))
    z=no
    [ "$got" = "$ZERO4M" ] && z=yes
    # Discard may legitimately leave old data, so only blkdiscard's status is
    # asserted; whether the range reads back as zeroes is reported.
    check discard $rc "rc=$rc reads_zero_after=$z discard_ios=$((d1 - d0)) $out"

    # BLKZEROOUT: a WRITE_ZEROES request when the device offers it
    # (write_zeroes_max_bytes > 0), otherwise the kernel writes zero pages.
    out=$($BLKDISCARD -z -o $((4 * MIB)) -l $((4 * MIB)) $DEV 2>&1)
    rc=$?
    drop_caches
    got=$(disk_sha $((4 * MIB)) $((4 * MIB)))
    [ $rc -eq 0 ] && [ "$got" = "$ZERO4M" ]
    check write-zeroes $? "rc=$rc write_zeroes_max_bytes=$(cat $SYS/queue/write_zeroes_max_bytes) $out"

    # Neither may touch the data next to the range.
    [ "$(disk_sha $((8 * MIB)) $((4 * MIB)))" = "$PAT" ]
    check discard-neighbour $? "8-12 MiB unchanged"
}

# --- (f) FLUSH -----------------------------------------------------------------
test_flush() {
    wc=$(cat $SYS/queue/write_cache)
    ct=$(cat $SYS/cache_type 2>/dev/null || echo n/a)
    info write_cache "$wc"
    info cache_type "$ct"
    # In write-through mode the kernel sends no FLUSH at all. Switch the device
    # to write back through virtio_blk's cache_type attribute: with
    # VIRTIO_BLK_F_CONFIG_WCE this writes the wce config field (QEMU forwards
    # it to the backend as VHOST_USER_SET_CONFIG). queue/write_cache cannot be
    # used: kernels with the "don't allow enabling a cache on devices that
    # don't support it" change refuse it with EINVAL.
    switched=no
    if [ "$wc" != "write back" ]; then
        if echo "write back" >$SYS/cache_type 2>/dev/null; then
            switched=yes
        else
            switched=refused
        fi
        wc2=$(cat $SYS/queue/write_cache)
        info write_cache_after_switch "$wc2"
    fi
    f0=$(stat_field 16)
    # conv=fsync: one fsync (=> FLUSH) after the writes.
    disk_write /tmp/pat $((16 * MIB)) 64k fsync
    rc1=$?
    fm=$(stat_field 16)
    # fio --fsync=1: a FLUSH after (nearly) every one of 64 writes.
    out=$($FIO --name=flush --filename=$DEV --ioengine=psync --direct=1 --rw=write \
        --bs=4k --size=256k --offset=$((20 * MIB)) --fsync=1 --output-format=terse 2>&1)
    rc2=$?
    f1=$(stat_field 16)
    [ "$switched" = yes ] && echo "$ct" >$SYS/cache_type
    # Both writers must have produced FLUSH requests.
    [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ $((fm - f0)) -gt 0 ] && [ $((f1 - fm)) -gt 0 ]
    check flush $? "write_cache='$wc' cache_type='$ct' switched=$switched dd_rc=$rc1 fio_rc=$rc2 flushes_dd=$((fm - f0)) flushes_fio=$((f1 - fm))"
    [ $rc2 -eq 0 ] || echo "$out"
}

# --- (h) fio verify over all queues ------------------------------------------------
# Interrupts per virtqueue: each request queue has its own MSI-X vector named
# virtioN-req.Q in /proc/interrupts. Prints "req.Q=count ..." (all CPUs summed).
vq_irqs() {
    awk '$NF ~ /^virtio[0-9]+-req\.[0-9]+$/ {
        s = 0
        for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i
        sub(/^virtio[0-9]+-/, "", $NF)
        printf "%s=%d ", $NF, s
    }' /proc/interrupts
}
test_fio() {
    nj=${NQ:-1}
    # 32 MiB in total (TCG is slow), one slice per job so jobs never verify
    # each other's blocks; each job pinned to its own CPU (split policy) so
    # every CPU, and thus every hardware queue, submits I/O.
    per=$((32 / nj))
    ncpu=$(nproc)
    set -- --filename=$DEV --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
        --iodepth=16 --numjobs="$nj" --offset=32M --size=${per}M \
        --offset_increment=${per}M --verify=crc32c --verify_fatal=1 \
        --cpus_allowed=0-$((ncpu - 1)) --cpus_allowed_policy=split \
        --group_reporting --output-format=terse --terse-version=3
    q0=$(vq_irqs)
    t0=$(now)
    out=$($FIO --name=write "$@" 2>&1)
    rc=$?
    # terse v3: field 5 = error, 8 = read IOPS, 49 = write IOPS.
    iops=$(echo "$out" | awk -F';' '/^3;/ { print "write_iops=" $49 " verify_read_iops=" $8 }')
    check fio-write-verify $rc "jobs=$nj $iops $(elapsed "$t0")"
    [ $rc -eq 0 ] || echo "$out" | tail -n 20

    drop_caches
    t0=$(now)
    out=$($FIO --name=write --verify_only "$@" 2>&1)
    rc=$?
    iops=$(echo "$out" | awk -F';' '/^3;/ { print "read_iops=" $8 }')
    check fio-verify-only $rc "jobs=$nj $iops $(elapsed "$t0")"
    [ $rc -eq 0 ] || echo "$out" | tail -n 20

    q1=$(vq_irqs)
    if [ -n "$q1" ]; then
        # Every virtqueue must have completed requests during fio.
        ok=0
        # shellcheck disable=SC2086 # split into words on purpose
        set -- $q0
        for v in $q1; do
            [ $((${v#*=} - ${1#*=})) -gt 0 ] || ok=1
            shift
        done
        check queues-used $ok "irqs_before=[${q0% }] after=[${q1% }]"
    else
        info queues-used "no per-queue MSI-X vectors in /proc/interrupts"
    fi
}

# --- (i) persistence -------------------------------------------------------------
test_persist_write() {
    persist_region
    head -c $PERSIST_LEN /dev/urandom >/tmp/persist
    want=$(file_sha /tmp/persist)
    disk_write /tmp/persist $PERSIST_OFF 1M fsync
    rc=$?
    drop_caches
    got=$(disk_sha $PERSIST_OFF $PERSIST_LEN)
    [ $rc -eq 0 ] && [ "$got" = "$want" ]
    check persist-write $? "offset=$PERSIST_OFF len=$PERSIST_LEN rc=$rc"
    echo "VTEST-PERSIST $got"
}

test_persist_read() {
    persist_region
    got=$(disk_sha $PERSIST_OFF $PERSIST_LEN)
    echo "VTEST-PERSIST $got"
    if [ -n "$P_expect_sha256" ]; then
        [ "$got" = "$P_expect_sha256" ]
        check persist-readback $? "got=$got expected=$P_expect_sha256"
    fi
}

# --- bench: one fio run, for the host to measure the back-end ------------------------
# Prints one VTEST-BENCH line. iops, bw_kib and the latency percentiles are
# fio's, over the measured phase only (ramp excluded); lat_* are fio's
# completion latencies (clat: submission to completion), in µs. ios is fio's
# I/O count over the measured phase; dev_ios is the number of requests the
# disk completed between the START and STOP markers (from /sys/block/vda/stat,
# ramp included), i.e. over the same window in which the host samples the
# back-end's CPU time, so CPU/dev_ios is the per-request cost.
test_bench() {
    case $P_bench_rw in
        randread | read) dir="read" ;;
        randwrite | write) dir="write" ;;
        *)
            result bench FAIL "vtest.bench_rw must be randread, randwrite, read or write"
            return
            ;;
    esac
    for v in "$P_bench_iodepth" "$P_bench_runtime" "$P_bench_jobs" "$P_bench_ramp"; do
        case $v in
            '' | *[!0-9]*)
                result bench FAIL "iodepth, runtime, ramp and jobs must be integers"
                return
                ;;
        esac
    done
    # One directory per hardware queue.
    set -- $SYS/mq/*
    info hw_queues "$#"
    # norandommap: with time_based runs fio need not track which blocks were
    # touched; the map costs guest CPU, and the guest CPU is the bottleneck.
    # randrepeat stays at its default (on), so every run of a workload issues
    # the same offsets whichever back-end serves it.
    # /sys/block/vda/stat fields 1 and 5: reads and writes completed.
    d0=$(awk '{ print $1 + $5 }' $SYS/stat)
    t0=$(now)
    echo "VTEST-BENCH-START"
    $FIO --name=bench --filename=$DEV --ioengine=libaio --direct=1 \
        --rw="$P_bench_rw" --bs="$P_bench_bs" --iodepth="$P_bench_iodepth" \
        --numjobs="$P_bench_jobs" --time_based --runtime="$P_bench_runtime" \
        --ramp_time="$P_bench_ramp" --norandommap --group_reporting \
        --output-format=json >/tmp/bench.json 2>/tmp/bench.err
    rc=$?
    d1=$(awk '{ print $1 + $5 }' $SYS/stat)
    t1=$(now)
    echo "VTEST-BENCH-STOP"
    if [ $rc -ne 0 ]; then
        result bench FAIL "fio exit status $rc"
        tail -n 20 /tmp/bench.err
        return
    fi
    # fio's JSON is pretty-printed one key per line; with group_reporting
    # there is one job, whose "read"/"write" object holds the totals and,
    # under clat_ns, the percentile table (in ns). Any other object
    # ("trim", "lat_ns", ...) ends the part of interest.
    if ! line=$(awk -v dir="$dir" '
        /^ *"(read|write|trim|sync)" : \{/ { cur = $1; gsub(/"/, "", cur); clat = 0; next }
        cur != dir { next }
        { key = $1; gsub(/"/, "", key); val = $3; gsub(/,/, "", val) }
        key == "clat_ns" { clat = 1 }
        key == "lat_ns" { clat = 0 }
        key == "iops" && iops == "" { iops = val }
        key == "bw" && bw == "" { bw = val }
        key == "total_ios" && ios == "" { ios = val }
        clat && key == "mean" && mean == "" { mean = val }
        clat && key == "50.000000" && p50 == "" { p50 = val }
        clat && key == "99.000000" && p99 == "" { p99 = val }
        END {
            if (ios == "" || p99 == "") exit 1
            printf "iops=%d bw_kib=%d lat_mean_us=%.1f lat_p50_us=%.1f lat_p99_us=%.1f ios=%d",
                iops + 0.5, bw, mean / 1000, p50 / 1000, p99 / 1000, ios
        }' /tmp/bench.json); then
        result bench FAIL "could not parse fio's JSON output"
        tail -n 40 /tmp/bench.json
        return
    fi
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    echo "VTEST-BENCH rw=$P_bench_rw bs=$P_bench_bs iodepth=$P_bench_iodepth jobs=$P_bench_jobs runtime_s=$P_bench_runtime ramp_s=$P_bench_ramp $line dev_ios=$((d1 - d0)) wall_s=$wall"
    result bench PASS "rw=$P_bench_rw $line"
}

# --- helpers for the reset and rounds modes ----------------------------------------
# Runs fio with the given arguments in the background; /tmp/fio.rc appears
# with its exit status when it ends (so its end can be polled for), its
# output goes to /tmp/fio.out.
fio_background() {
    rm -f /tmp/fio.rc
    ($FIO "$@" >/tmp/fio.out 2>&1; echo $? >/tmp/fio.rc) &
}

# wait_writes_flowing N: true once the disk has completed N more writes than
# when called and still has writes in flight, i.e. the background fio is in
# the middle of its writes; false if fio ends first, or after 30 s.
wait_writes_flowing() {
    _w0=$(stat_field 5)
    _i=0
    while [ ! -e /tmp/fio.rc ] && [ $_i -lt 300 ]; do
        # /sys/block/vda/inflight: requests in flight, reads then writes.
        read -r _r _w <$SYS/inflight
        [ "$_w" -gt 0 ] && [ $(($(stat_field 5) - _w0)) -ge "$1" ] && return 0
        usleep 100000
        _i=$((_i + 1))
    done
    return 1
}

# The kernel's own report of trouble with the disk during this boot: failed
# requests, a task stuck on a request that never completes, a used ring the
# device got wrong (virtio_ring: "id N is not a head!", "id N out of range"),
# warnings, oopses.
check_kernel_log() {
    bad=$(dmesg | grep -E 'I/O error|blocked for more than|WARNING:|BUG:|Oops|Call Trace|is not a head|out of range')
    [ -z "$bad" ]
    check kernel-log $? "$(echo "$bad" | grep -c .) suspicious lines"
    [ -z "$bad" ] || echo "$bad" | head -n 20
}

# fio arguments shared by reset and rounds: 4 KiB random writes, iodepth 16,
# one job per hardware queue, each pinned to its own CPU (as in test_fio) and
# writing its own slice of REGION_MB MiB at OFFSET_MB.
set_fio_writes() { # set_fio_writes OFFSET_MB REGION_MB: sets FIO_ARGS
    _nj=${NQ:-1}
    _per=$(($2 / _nj))
    FIO_ARGS="--filename=$DEV --ioengine=libaio --direct=1 --rw=randwrite --bs=4k
        --iodepth=16 --numjobs=$_nj --offset=$1M --size=${_per}M --offset_increment=${_per}M
        --cpus_allowed=0-$(($(nproc) - 1)) --cpus_allowed_policy=split
        --group_reporting --output-format=terse --terse-version=3"
}

# --- reset: a reboot or a system reset while fio writes ---------------------------
MARKER_OFF=$((72 * MIB))
# The marker is one text line in a 4 KiB block, padded with NULs.
read_marker() {
    dd if=$DEV bs=4096 iflag=direct,skip_bytes skip=$MARKER_OFF count=1 2>/dev/null |
        tr -d '\000' | head -n 1
}
write_marker() { # write_marker TEXT: O_DIRECT, then fsync so it is durable
    printf '%s\n' "$1" |
        dd of=$DEV bs=4096 count=1 oflag=direct,seek_bytes seek=$MARKER_OFF conv=sync,fsync 2>/dev/null
}

reset_first_boot() {
    test_identity
    test_persist_write # sets $want, the hash of what it wrote
    marker="vtest-boot $P_boot_nonce 1 $want"
    write_marker "$marker"
    rc=$?
    [ $rc -eq 0 ] && [ "$(read_marker)" = "$marker" ]
    check marker-write $? "boot 1, rc=$rc"
    [ $FAILS -eq 0 ] || return

    set_fio_writes 32 32
    # time_based: fio outlasts the reset, whenever it comes; 30 s bounds the
    # wait for a reset that never comes.
    # shellcheck disable=SC2086 # FIO_ARGS is a list of words
    fio_background --name=reset $FIO_ARGS --time_based --runtime=30
    if ! wait_writes_flowing 1000; then
        result reset-point FAIL "fio's writes never got going (fio rc=$(cat /tmp/fio.rc 2>/dev/null))"
        tail -n 20 /tmp/fio.out
        return
    fi
    read -r _r _w <$SYS/inflight
    case $P_reset_by in
        self)
            # sysrq b: an immediate reboot, no sync and no device shutdown,
            # as a watchdog or a panic would do it.
            info reset "sysrq-b with $_w writes in flight"
            echo b >/proc/sysrq-trigger
            ;;
        host)
            info reset "asking the host for a reset with $_w writes in flight"
            echo "VTEST-RESET-READY"
            wait
            ;;
    esac
    result reset FAIL "no reset came while fio ran (fio rc=$(cat /tmp/fio.rc 2>/dev/null))"
}

reset_second_boot() { # reset_second_boot PERSIST_SHA (recorded by the first boot)
    write_marker "vtest-boot $P_boot_nonce 2 $1"
    check marker-update $? "boot 2"
    test_identity
    persist_region
    got=$(disk_sha $PERSIST_OFF $PERSIST_LEN)
    [ "$got" = "$1" ]
    check persist-after-reset $? "got=$got expected=$1"
    run_timed test_fio
    check_kernel_log
}

test_reset() {
    case $P_reset_by in
        self | host) ;;
        *)
            result reset FAIL "vtest.reset_by must be self or host"
            return
            ;;
    esac
    case $P_boot_nonce in
        '' | *[!0-9a-f]*)
            result reset FAIL "vtest.boot_nonce must be hex digits"
            return
            ;;
    esac
    # shellcheck disable=SC2046 # the marker's words
    set -- $(read_marker)
    boot=1
    [ "$1" = vtest-boot ] && [ "$2" = "$P_boot_nonce" ] && boot=$(($3 + 1))
    info boot "$boot"
    case $boot in
        1) reset_first_boot ;;
        2) reset_second_boot "$4" ;;
        *) result boot-count FAIL "boot $boot of one run: the VM keeps resetting" ;;
    esac
}

# --- rounds: fio write+verify rounds while the host kills the back-end --------------
test_rounds() {
    case $P_rounds in
        '' | *[!0-9]*)
            result rounds FAIL "vtest.rounds must be an integer"
            return
            ;;
    esac
    test_identity
    set_fio_writes 96 32
    ncpu=$(nproc)
    r=1
    while [ $r -le "$P_rounds" ]; do
        t0=$(now)
        # Random reads of 4-128 KiB on the same queues (0-96 MiB, not
        # verified), alongside the writes: requests of different kinds and
        # sizes complete out of order, and only then does a back-end restart
        # need to know exactly which requests were in flight. Were they all
        # to complete in order, QEMU's fallback for a back-end without
        # INFLIGHT_SHMFD (resume at the used index) would happen to be exact.
        $FIO --name=reads --filename=$DEV --ioengine=libaio --direct=1 --rw=randread \
            --bsrange=4k-128k --iodepth=16 --numjobs="${NQ:-1}" --offset=0 --size=96M \
            --time_based --runtime=600 --cpus_allowed=0-$((ncpu - 1)) --cpus_allowed_policy=split \
            --group_reporting --output-format=terse --terse-version=3 >/tmp/reads.out 2>&1 &
        rpid=$!
        # Each round its own seed: other data at other offsets than the round
        # before, so a lost write reads back as stale and fails the verify.
        # shellcheck disable=SC2086 # FIO_ARGS is a list of words
        fio_background --name=round --randseed=$r $FIO_ARGS --verify=crc32c --verify_fatal=1
        # Announced either way, so the host never waits for a round that
        # will not be announced; "late" tells it the writes were over.
        if wait_writes_flowing 500; then
            echo "VTEST-ROUND $r writing"
        else
            echo "VTEST-ROUND $r late"
        fi
        while [ ! -e /tmp/fio.rc ]; do usleep 100000; done
        kill -INT $rpid
        wait
        rc=$(cat /tmp/fio.rc)
        # terse v3: field 5 = error, 8 = read IOPS (the verify), 49 = write IOPS.
        stats=$(awk -F';' '/^3;/ { print "write_iops=" $49 " verify_read_iops=" $8 }' /tmp/fio.out)
        check fio-round-$r "$rc" "seed=$r $stats $(elapsed "$t0")"
        [ "$rc" -eq 0 ] || tail -n 20 /tmp/fio.out
        # Stopped by SIGINT, fio exits with 128, so its own error field says
        # whether a read failed.
        rstats=$(awk -F';' '/^3;/ { print "error=" $5 " read_iops=" $8 }' /tmp/reads.out)
        case $rstats in
            error=0\ *) rrc=0 ;;
            *) rrc=1 ;;
        esac
        check fio-reads-round-$r $rrc "$rstats"
        [ $rrc -eq 0 ] || tail -n 20 /tmp/reads.out
        if [ "$rc" -ne 0 ] || [ $rrc -ne 0 ]; then break; fi
        r=$((r + 1))
    done
    if [ $r -gt "$P_rounds" ]; then
        drop_caches
        t0=$(now)
        # shellcheck disable=SC2086 # FIO_ARGS is a list of words
        out=$($FIO --name=round --randseed="$P_rounds" $FIO_ARGS --verify=crc32c --verify_fatal=1 --verify_only 2>&1)
        rc=$?
        check fio-verify-after-rounds $rc "seed=$P_rounds $(echo "$out" | awk -F';' '/^3;/ { print "read_iops=" $8 }') $(elapsed "$t0")"
        [ $rc -eq 0 ] || echo "$out" | tail -n 20
    fi
    check_kernel_log
}

run_timed() { # run_timed FUNCTION: runs it and reports its duration
    _t=$(now)
    "$1"
    info "time.$1" "$(elapsed "$_t")"
}

T0=$(now)
case $P_mode in
    full)
        [ "$DISK_BYTES" -ge $((96 * MIB)) ]
        check disk-size-usable $? "$DISK_BYTES bytes (>= 96 MiB needed)"
        if [ "$DISK_BYTES" -ge $((96 * MIB)) ]; then
            run_timed test_identity
            run_timed test_ext4
            run_timed test_raw
            run_timed test_discard
            run_timed test_flush
            run_timed test_fio
            run_timed test_persist_write
            check_kernel_log
        fi
        ;;
    readback)
        test_identity
        test_persist_read
        ;;
    bench)
        test_bench
        ;;
    reset)
        # The regions above end at 72 MiB + 4 KiB.
        [ "$DISK_BYTES" -ge $((73 * MIB)) ]
        check disk-size-usable $? "$DISK_BYTES bytes (>= 73 MiB needed)"
        [ "$DISK_BYTES" -ge $((73 * MIB)) ] && test_reset
        ;;
    rounds)
        [ "$DISK_BYTES" -ge $((128 * MIB)) ]
        check disk-size-usable $? "$DISK_BYTES bytes (>= 128 MiB needed)"
        [ "$DISK_BYTES" -ge $((128 * MIB)) ] && test_rounds
        ;;
    *)
        result mode FAIL "unknown vtest.mode=$P_mode"
        ;;
esac
info time.total "$(elapsed "$T0")"
finish
