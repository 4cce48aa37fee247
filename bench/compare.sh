#!/usr/bin/env bash
# compare.sh: our vhost-user-blk daemon against qemu-storage-daemon (qsd),
# driven by vhost-user-blk-bench (a userspace vhost-user front-end, no guest).
#
# Usage:
#   bench/compare.sh [--rounds 3] [--runtime 5] [--ramp 1] [--poll-us 50]
#                    [--backend-cpu 1] [--generator-cpu 0] [--only null|file|loop] [--no-uring]
#
#   --rounds N         rounds; each round runs every workload on both back-ends
#   --runtime S        measured seconds per run (after --ramp seconds)
#   --ramp S           seconds run before measuring starts
#   --poll-us N        our daemon's --poll-us (longest busy-poll of an idle queue)
#   --backend-cpu C    CPU both back-ends are pinned to (taskset; ours also --cpus C)
#   --generator-cpu C  CPU of the generator's queue thread (and of host fio)
#   --only null|file|loop  run only one of the three stores
#   --no-uring         file and loop stores: leave out the io_uring variants (ours-uring, qsd-uring)
#
# Stores: "null" (qsd: driver=null-co,read-zeroes=off; ours: --engine null),
# both 1 GiB, no data touched; "file": one 1 GiB raw image under /var/tmp,
# written in full once, opened with O_DIRECT and Linux AIO by both
# (qsd: aio=native,cache.direct=on; ours: --backing). The file store also
# runs both with io_uring: ours-uring (--engine uring) and qsd-uring
# (aio=io_uring,cache.direct=on). "loop": a loop device over a 1 GiB file in
# /dev/shm (tmpfs), a kernel block device whose speed is memory's and the
# CPU's, not a disk's. This VM's file store is a virtual disk whose speed
# swings several-fold from minute to minute; the loop store does not (ours:
# --backing /dev/loopN; qsd: driver=host_device with the same aio and cache
# options; both engines, like the file store). Workloads: null: 4 KiB
# randread at depth 1, 32 and 128; file and loop: 4 KiB randread and
# randwrite at depth 32; one queue, completion by polling the used ring. Host
# fio on the same image or device (libaio, O_DIRECT, same depth, pinned to the
# generator CPU) gives the store's own limit, and the generator against its
# in-process instant device gives the generator's own limit. (On the loop
# store the kernel's loop workers copy the data on whichever CPU is free: host
# fio has one CPU for itself and the other for them, a back-end shares its CPU
# with them, so there host fio is no bound a back-end can reach on 2 cores and
# ours/qsd is the figure to read.)
#
# Every round runs each workload on every back-end one after the other; the
# order reverses between rounds (A B C D, D C B A, ...). Each run starts the
# back-end fresh, waits until it listens, runs the generator with
# --backend-pid (back-end CPU seconds per I/O from /proc/PID/stat over the
# measured interval) and stops the back-end (it must exit 0 on SIGTERM).
#
# Prints a markdown report (machine, medians, ratios ours/qsd: of the medians,
# and the median of each round's own ratio, with the rounds' ratios) on stdout
# and writes every run, the medians and the per-round ratios to
# bench/results/compare-<UTC date-time>.json. Progress goes to stderr.
#
# Environment:
#   BENCH_TMPDIR        where the image and sockets go (default /var/tmp; not tmpfs)
#   BENCH_SCRATCH_PATH  the daemon's build directory (default .build)
set -euo pipefail

VTEST_PROG=compare
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/guest/lib.sh
source "$ROOT/scripts/guest/lib.sh"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit "$1"; }

ROUNDS=3 RUNTIME=5 RAMP=1 POLL_US=50 BCPU=1 GCPU=0 ONLY='' URING=1
while (($#)); do
    [[ $1 == -h || $1 == --help ]] && usage 0
    if [[ $1 == --no-uring ]]; then URING=0; shift; continue; fi
    (($# >= 2)) || die "$1 needs a value (see --help)"
    case $1 in
        --rounds) ROUNDS=$2 ;;
        --runtime) RUNTIME=$2 ;;
        --ramp) RAMP=$2 ;;
        --poll-us) POLL_US=$2 ;;
        --backend-cpu) BCPU=$2 ;;
        --generator-cpu) GCPU=$2 ;;
        --only) ONLY=$2 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift 2
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive number of seconds"
[[ $RAMP =~ ^[0-9]+$ ]] || die "--ramp must be a non-negative number of seconds"
[[ $POLL_US =~ ^[0-9]+$ ]] || die "--poll-us must be a non-negative integer"
[[ $BCPU =~ ^[0-9]+$ && $GCPU =~ ^[0-9]+$ ]] || die "--backend-cpu and --generator-cpu take one CPU number"
[[ -z $ONLY || $ONLY == null || $ONLY == file || $ONLY == loop ]] || die "--only takes null, file or loop"

IMG_MIB=1024       # 1 GiB: 262144 4 KiB blocks for random offsets; written in full in a few seconds
READY_TIMEOUT=30   # s; a back-end listens well within a second
STOP_TIMEOUT=30    # s; SIGTERM ends a back-end well within a second
POLL=0.02          # s between looks at the socket while a back-end starts
# Generator runs are bounded by --time; this only trips on a hang.
RUN_TIMEOUT=$((RAMP + RUNTIME + 60))
# workload = store:rw:depth
WORKLOADS=()
[[ -z $ONLY || $ONLY == null ]] && WORKLOADS+=(null:randread:1 null:randread:32 null:randread:128)
[[ -z $ONLY || $ONLY == file ]] && WORKLOADS+=(file:randread:32 file:randwrite:32)
[[ -z $ONLY || $ONLY == loop ]] && WORKLOADS+=(loop:randread:32 loop:randwrite:32)

bench_cleanup_on_exit

ensure_packages iproute2 coreutils util-linux qemu-system-x86 jq fio
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found"
bench_workdir vub-compare
SOCK=$WORK/vhost.sock
IMG=$WORK/disk.img
RUNS=$WORK/runs.jsonl
: >"$RUNS"
bench_daemon "$ROOT" "$WORK"
# The generator has its own scratch path so that building it never touches
# the daemon's build directory (which others may be using).
log "building the release generator"
(cd "$ROOT" && swift build -c release --scratch-path .build-lg --product vhost-user-blk-bench >&2)
# A private copy, like the daemon's.
GEN=$WORK/vhost-user-blk-bench
cp "$ROOT/.build-lg/release/vhost-user-blk-bench" "$GEN"
DAEMON_SHA=${DAEMON_SHA:0:12}

if [[ -z $ONLY || $ONLY == file ]]; then bench_image "$IMG" "$IMG_MIB"; fi
if [[ -z $ONLY || $ONLY == loop ]]; then bench_loop_device "$IMG_MIB"; fi

# The back-ends each store is measured on.
BACKENDS_null=(ours qsd)
BACKENDS_file=(ours qsd)
((URING)) && BACKENDS_file=(ours ours-uring qsd qsd-uring)

# start_backend ours|ours-uring|qsd|qsd-uring null|file LOG: starts it pinned (BPID), waits until it listens.
start_backend() {
    local which=$1 store=$2 blog=$3
    rm -f "$SOCK"
    case $which:$store in
        ours:null)
            taskset -c "$BCPU" "$DAEMON" --socket "$SOCK" --engine null --size "${IMG_MIB}M" --queues 1 \
                --cpus "$BCPU" --poll-us "$POLL_US" </dev/null >"$blog" 2>&1 &
            ;;
        ours:file | ours-uring:file | ours:loop | ours-uring:loop)
            local engine=aio backing=$IMG
            [[ $which == ours-uring ]] && engine=uring
            [[ $store == loop ]] && backing=$LOOPDEV
            taskset -c "$BCPU" "$DAEMON" --socket "$SOCK" --backing "$backing" --engine "$engine" --queues 1 \
                --cpus "$BCPU" --poll-us "$POLL_US" </dev/null >"$blog" 2>&1 &
            ;;
        qsd:null)
            # read-zeroes=off: null-co then returns without touching the buffer, as ours does.
            taskset -c "$BCPU" qemu-storage-daemon \
                --blockdev "driver=null-co,node-name=n0,size=$((IMG_MIB << 20)),read-zeroes=off" \
                --export "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=1" \
                </dev/null >"$blog" 2>&1 &
            ;;
        qsd:file)
            start_qsd "$SOCK" "$IMG" 1 "$blog"
            ;;
        qsd:loop | qsd-uring:loop)
            # start_qsd's options on the block device (host_device: QEMU's driver for one).
            local aio=native
            [[ $which == qsd-uring ]] && aio=io_uring
            qemu-storage-daemon \
                --blockdev "driver=host_device,node-name=f0,filename=$LOOPDEV,aio=$aio,cache.direct=on,discard=unmap" \
                --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=1" \
                </dev/null >"$blog" 2>&1 &
            ;;
        qsd-uring:file)
            # start_qsd's blockdev with QEMU's io_uring back-end instead of Linux AIO.
            qemu-storage-daemon \
                --blockdev "driver=file,node-name=f0,filename=$IMG,aio=io_uring,cache.direct=on,discard=unmap" \
                --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=1" \
                </dev/null >"$blog" 2>&1 &
            ;;
    esac
    BPID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$BPID" 2>/dev/null || { BPID=; die "$which exited before listening: $(tail -n 3 "$blog")"; }
        if socket_listening "$SOCK" && { [[ $which == qsd* ]] || grep -q listening "$blog"; }; then
            # qsd is not started pinned: move every qsd thread (-a) now that it has started them all.
            [[ $which == qsd* ]] && taskset -a -c -p "$BCPU" "$BPID" >/dev/null
            return 0
        fi
        sleep "$POLL"
    done
    die "$which not listening after ${READY_TIMEOUT}s"
}

# run_one BACKEND WORKLOAD ROUND: one run; appends a JSON line to $RUNS.
run_one() {
    local which=$1 store rw depth round=$3 out rc=0
    IFS=: read -r store rw depth <<<"$2"
    start_backend "$which" "$store" "$WORK/$which.log"
    out=$(timeout "$RUN_TIMEOUT" "$GEN" --socket "$SOCK" --rw "$rw" --bs 4k --depth "$depth" --time "$RUNTIME" \
        --ramp "$RAMP" --cpus "$GCPU" --backend-pid "$BPID" --no-hugepages --json 2>"$WORK/gen.err") || rc=$?
    stop_process "$BPID"
    BPID=
    ((rc == 0)) || die "generator failed ($rc) on $which $2: $(tail -n 3 "$WORK/gen.err")"
    ((STOP_STATUS == 0)) || log "warning: $which exited with status $STOP_STATUS"
    jq -c --arg b "$which" --arg w "$2" --argjson r "$round" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
        '{backend: $b, workload: $w, round: $r, load1: ($load | tonumber)} + .' <<<"$out" >>"$RUNS"
    log "round $round $2 $which: $(jq -r '"\(.iops | floor) IOPS, p50 \(.latency.p50_us) µs, p99 \(.latency.p99_us) µs, backend \(.backend_cpu_us_per_io) µs/IO"' <<<"$out")"
}

# fio_one WORKLOAD ROUND: host fio on the image, same depth, pinned to the generator CPU.
fio_one() {
    local store rw depth round=$2 out
    IFS=: read -r store rw depth <<<"$1"
    local target=$IMG
    [[ $store == loop ]] && target=$LOOPDEV
    out=$(timeout "$RUN_TIMEOUT" taskset -c "$GCPU" fio --name=host --filename="$target" --direct=1 --ioengine=libaio \
        --rw="$rw" --bs=4k --iodepth="$depth" --time_based --ramp_time="$RAMP" --runtime="$RUNTIME" \
        --output-format=json)
    jq -c --arg w "$1" --argjson r "$round" --arg rw "$rw" '
        (.jobs[0] | if $rw == "randread" then .read else .write end) as $j |
        {backend: "fio", workload: $w, round: $r, iops: $j.iops,
         latency: {p50_us: ($j.clat_ns.percentile["50.000000"] / 1000), p99_us: ($j.clat_ns.percentile["99.000000"] / 1000)},
         backend_cpu_us_per_io: null}' <<<"$out" >>"$RUNS"
    log "round $round $1 host fio: $(tail -n 1 "$RUNS" | jq -r '.iops | floor') IOPS"
}

# self_one ROUND: the generator against its in-process instant device (its own ceiling).
self_one() {
    local depth out
    for depth in 1 32 128; do
        out=$("$GEN" --self-test-device --device-cpus "$BCPU" --cpus "$GCPU" --depth "$depth" --time "$RUNTIME" \
            --ramp "$RAMP" --no-hugepages --json)
        jq -c --arg w "self:randread:$depth" --argjson r "$1" '{backend: "self", workload: $w, round: $r} + .' <<<"$out" >>"$RUNS"
    done
    log "round $1 generator self-capacity done"
}

for ((round = 1; round <= ROUNDS; round++)); do
    self_one "$round"
    for w in "${WORKLOADS[@]}"; do
        if [[ $w == null:* ]]; then order=("${BACKENDS_null[@]}"); else order=("${BACKENDS_file[@]}"); fi
        if ((round % 2 == 0)); then
            reversed=()
            for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
            order=("${reversed[@]}")
        fi
        for b in "${order[@]}"; do run_one "$b" "$w" "$round"; done
        [[ $w == null:* ]] || fio_one "$w" "$round"
    done
done

OUT_JSON=$ROOT/bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ).json
mkdir -p "$ROOT/bench/results"
MEDIANS=$(jq -s '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    group_by(.workload + "|" + .backend) | map({
        workload: .[0].workload, backend: .[0].backend, runs: length,
        iops: (map(.iops) | median), iops_min: (map(.iops) | min), iops_max: (map(.iops) | max),
        p50_us: (map(.latency.p50_us) | median), p99_us: (map(.latency.p99_us) | median),
        cpu_us_per_io: (map(.backend_cpu_us_per_io) | if any(. == null) then null else median end),
        load1: (map(.load1 // 0) | median)})' "$RUNS")
# The median over rounds of ours/qsd within each round: both ran back to back there, so a drift of
# the machine between rounds (this VM's vCPUs change speed several-fold when the host moves them)
# cancels, where a ratio of the two medians can pair one back-end's fast rounds with the other's
# slow ones.
PAIRED=$(jq -s '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    map(select(.backend == "ours" or .backend == "qsd")) | group_by(.workload) | map({
        workload: .[0].workload,
        ratios: (group_by(.round) | map(map({key: .backend, value: .iops}) | from_entries
            | select(.ours != null and .qsd != null and .qsd > 0) | .ours / .qsd))}
        | . + {median: (.ratios | if length > 0 then median else null end)})' "$RUNS")
jq -n --slurpfile runs "$RUNS" --argjson medians "$MEDIANS" --argjson paired "$PAIRED" \
    --arg daemon_sha "$DAEMON_SHA" --arg daemon_built "$DAEMON_MTIME" --arg checkout "$GIT_COMMIT" \
    --argjson rounds "$ROUNDS" --argjson runtime "$RUNTIME" --argjson ramp "$RAMP" --argjson poll_us "$POLL_US" \
    '{daemon: {sha256_prefix: $daemon_sha, built: $daemon_built, checkout_head: $checkout},
      rounds: $rounds, runtime_s: $runtime, ramp_s: $ramp, poll_us: $poll_us, medians: $medians,
      paired_ours_over_qsd: $paired, runs: $runs}' >"$OUT_JSON"
log "wrote $OUT_JSON"

echo "#### vhost-user-blk-bench: ours vs qemu-storage-daemon ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo
echo "- Machine: $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, kernel $(uname -r)"
echo "- Peer: $(qemu-storage-daemon --version | head -n 1)"
echo "- Ours: binary built $DAEMON_MTIME (sha256 $DAEMON_SHA), checkout at $GIT_COMMIT, --poll-us $POLL_US"
echo "- Back-end on CPU $BCPU, generator (and host fio) on CPU $GCPU; 4 KiB, 1 queue, poll completion;"
echo "  $RUNTIME s + $RAMP s ramp per run; medians of $ROUNDS alternating round(s); raw: ${OUT_JSON#"$ROOT"/bench/}"
echo
echo "| workload | ours IOPS | qsd IOPS | ours/qsd | ours/qsd per round | ours p50 µs | qsd p50 µs | ours p99 µs | qsd p99 µs | ours CPU µs/IO | qsd CPU µs/IO | host fio IOPS | ours/fio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -r --argjson paired "$PAIRED" '
    def f(d): if . == null then "–" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
    (map(select(.backend != "self")) | group_by(.workload))[] |
    (map({key: .backend, value: .}) | from_entries) as $m |
    ($paired | map(select(.workload == $m.ours.workload)) | first) as $p |
    [$m.ours.workload,
     ($m.ours.iops | f(0)), ($m.qsd.iops | f(0)), (($m.ours.iops / $m.qsd.iops) | f(2)),
     (($p.median | f(2)) + " (" + ($p.ratios | map(f(2)) | join(", ")) + ")"),
     ($m.ours.p50_us | f(2)), ($m.qsd.p50_us | f(2)), ($m.ours.p99_us | f(2)), ($m.qsd.p99_us | f(2)),
     ($m.ours.cpu_us_per_io | f(3)), ($m.qsd.cpu_us_per_io | f(3)),
     ($m.fio.iops | f(0)), (if $m.fio then ($m.ours.iops / $m.fio.iops | f(3)) else null | f(0) end)]
    | "| " + join(" | ") + " |"' <<<"$MEDIANS"
if ((URING)) && [[ $ONLY != null ]]; then
    echo
    echo "File and loop stores, Linux AIO against io_uring (ours: --engine aio|uring; qsd: aio=native|io_uring):"
    echo
    echo "| workload | back-end | IOPS | p50 µs | p99 µs | CPU µs/IO | vs host fio |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    jq -r '
        def f(d): if . == null then "–" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
        (map(select(.workload | startswith("file:") or startswith("loop:"))) | group_by(.workload))[] |
        (map({key: .backend, value: .}) | from_entries) as $m |
        ("ours", "ours-uring", "qsd", "qsd-uring") as $b | select($m[$b]) |
        [$m[$b].workload, $b, ($m[$b].iops | f(0)), ($m[$b].p50_us | f(2)), ($m[$b].p99_us | f(2)),
         ($m[$b].cpu_us_per_io | f(3)), (if $m.fio then ($m[$b].iops / $m.fio.iops | f(3)) else null | f(0) end)]
        | "| " + join(" | ") + " |"' <<<"$MEDIANS"
fi
echo
echo "Generator against its in-process instant device (its own ceiling):"
echo
echo "| depth | IOPS (min–max) | p50 µs | p99 µs |"
echo "|---:|---:|---:|---:|"
jq -r 'map(select(.backend == "self")) | sort_by(.workload | split(":")[2] | tonumber)[] |
    "| \(.workload | split(":")[2]) | \(.iops | round) (\(.iops_min | round)–\(.iops_max | round)) | \(.p50_us) | \(.p99_us) |"' <<<"$MEDIANS"
echo
echo "Spread (min–max IOPS per back-end):"
echo
jq -r 'map(select(.backend != "self"))[] | "- \(.workload) \(.backend): \(.iops_min | round)–\(.iops_max | round) (load1 median \(.load1))"' <<<"$MEDIANS"
