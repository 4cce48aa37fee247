#!/usr/bin/env bash
# poll-cost.sh: what our daemon's idle polling costs, without a guest. Requests arrive one at a
# time with a pause ("think time") between a completion and the next request, as from a slow guest,
# and the daemon's CPU per request is measured; then a connected but idle queue's CPU.
#
# Usage:
#   bench/poll-cost.sh [--daemon LABEL=PATH]... [--rounds 3] [--runtime 5] [--think "0 10 30 60 120"]
#                      [--idle 10] [--poll-us 50] [--backend-cpu 1] [--generator-cpu 0]
#
#   --daemon LABEL=PATH  a daemon binary to measure (repeatable: e.g. before=/tmp/a after=/tmp/b);
#                        default: the checkout, built in release (BENCH_SCRATCH_PATH, default .build)
#   --rounds N           rounds; each runs every workload on every daemon, the order rotating
#   --runtime S          measured seconds per paced run (after a 1 s ramp)
#   --think "LIST"       think times in µs, one paced run each (depth 1, 4 KiB randread, null store)
#   --idle S             seconds a connected queue sits idle while the daemon's CPU is read
#   --poll-us N          every daemon's --poll-us
#   --backend-cpu C      CPU the daemon is pinned to (taskset and --cpus)
#   --generator-cpu C    CPU of the generator's queue thread
#
# The generator (vhost-user-blk-bench, --think-us) polls the used ring; the daemon runs
# --engine null, so what is measured is the daemon's own cost per request and per idle gap.
# Back-end CPU comes from /proc/PID/stat (10 ms ticks): over 5 s at a few µs per request, and
# over 10 s idle, that is < 0.2 % of a core.
#
# Prints a markdown table of medians on stdout and writes every run to
# bench/results/poll-cost-<UTC date-time>.json. Progress goes to stderr.
set -euo pipefail

VTEST_PROG=poll-cost
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/guest/lib.sh
source "$ROOT/scripts/guest/lib.sh"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit "$1"; }

DAEMONS=() ROUNDS=3 RUNTIME=5 THINK="0 10 30 60 120" IDLE=10 POLL_US=50 BCPU=1 GCPU=0
while (($#)); do
    [[ $1 == -h || $1 == --help ]] && usage 0
    (($# >= 2)) || die "$1 needs a value (see --help)"
    case $1 in
        --daemon) DAEMONS+=("$2") ;;
        --rounds) ROUNDS=$2 ;;
        --runtime) RUNTIME=$2 ;;
        --think) THINK=$2 ;;
        --idle) IDLE=$2 ;;
        --poll-us) POLL_US=$2 ;;
        --backend-cpu) BCPU=$2 ;;
        --generator-cpu) GCPU=$2 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift 2
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive number of seconds"
[[ $IDLE =~ ^[1-9][0-9]*$ ]] || die "--idle must be a positive number of seconds"
[[ $POLL_US =~ ^[0-9]+$ ]] || die "--poll-us must be a non-negative integer"
for t in $THINK; do [[ $t =~ ^[0-9]+$ ]] || die "--think takes µs values, got $t"; done

READY_TIMEOUT=30 # s; the daemon listens well within a second
RAMP=1           # s before measuring: the daemon's poll window has settled by then
RUN_TIMEOUT=$((RAMP + RUNTIME + IDLE + 60))

bench_cleanup_on_exit

ensure_packages iproute2 coreutils util-linux jq
bench_workdir vub-poll-cost
SOCK=$WORK/vhost.sock
RUNS=$WORK/runs.jsonl
: >"$RUNS"
LABELS=() BINS=()
if ((${#DAEMONS[@]} == 0)); then
    bench_daemon "$ROOT" "$WORK"
    LABELS=(ours) BINS=("$DAEMON")
else
    for d in "${DAEMONS[@]}"; do
        [[ $d == *=* ]] || die "--daemon takes LABEL=PATH, got $d"
        [[ -x ${d#*=} ]] || die "not an executable: ${d#*=}"
        # Private copies: a rebuild while this runs must not change what is measured.
        cp "${d#*=}" "$WORK/daemon-${d%%=*}"
        LABELS+=("${d%%=*}") BINS+=("$WORK/daemon-${d%%=*}")
    done
fi
log "building the release generator"
(cd "$ROOT" && swift build -c release --scratch-path "${BENCH_SCRATCH_PATH:-.build-lg}" --product vhost-user-blk-bench >&2)
GEN=$WORK/vhost-user-blk-bench
cp "$ROOT/${BENCH_SCRATCH_PATH:-.build-lg}/release/vhost-user-blk-bench" "$GEN"

start_daemon() {
    rm -f "$SOCK"
    taskset -c "$BCPU" "$1" --socket "$SOCK" --engine null --size 1024M --queues 1 --cpus "$BCPU" \
        --poll-us "$POLL_US" </dev/null >"$WORK/daemon.log" 2>&1 &
    BPID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    until socket_listening "$SOCK" && grep -q listening "$WORK/daemon.log"; do
        kill -0 "$BPID" 2>/dev/null || { BPID=; die "$1 exited before listening: $(tail -n 3 "$WORK/daemon.log")"; }
        ((SECONDS < deadline)) || die "$1 not listening after ${READY_TIMEOUT}s"
        sleep 0.02 # 20 ms between looks: invisible next to the daemon's start-up
    done
}

# run_one INDEX WORKLOAD ROUND: WORKLOAD is think:<µs> or idle.
run_one() {
    local label=${LABELS[$1]} w=$2 round=$3 out rc=0
    start_daemon "${BINS[$1]}"
    if [[ $w == idle ]]; then
        # A short burst first, so the queue has run (and its window adapted) before it idles.
        out=$(timeout "$RUN_TIMEOUT" "$GEN" --socket "$SOCK" --rw randread --depth 1 --requests 20000 --cpus "$GCPU" \
            --backend-pid "$BPID" --idle "$IDLE" --no-hugepages --json 2>"$WORK/gen.err") || rc=$?
    else
        out=$(timeout "$RUN_TIMEOUT" "$GEN" --socket "$SOCK" --rw randread --depth 1 --think-us "${w#think:}" \
            --time "$RUNTIME" --ramp "$RAMP" --cpus "$GCPU" --backend-pid "$BPID" --no-hugepages --json \
            2>"$WORK/gen.err") || rc=$?
    fi
    stop_process "$BPID"
    BPID=
    ((rc == 0)) || die "generator failed ($rc) on $label $w: $(tail -n 3 "$WORK/gen.err")"
    ((STOP_STATUS == 0)) || log "warning: $label exited with status $STOP_STATUS"
    jq -c --arg b "$label" --arg w "$w" --argjson r "$round" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
        '{backend: $b, workload: $w, round: $r, load1: ($load | tonumber)} + .' <<<"$out" >>"$RUNS"
    if [[ $w == idle ]]; then
        log "round $round $w $label: $(jq -r '"\(.backend_idle_cpu_percent) % of a core"' <<<"$out")"
    else
        log "round $round $w $label: $(jq -r '"\(.iops | floor) IOPS, p50 \(.latency.p50_us) µs, \(.backend_cpu_us_per_io) µs/IO"' <<<"$out")"
    fi
}

WORKLOADS=()
for t in $THINK; do WORKLOADS+=("think:$t"); done
WORKLOADS+=(idle)
n=${#LABELS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for w in "${WORKLOADS[@]}"; do
        # Rotate which daemon goes first, so a drift in the machine's load favours none.
        for ((k = 0; k < n; k++)); do run_one $(((k + round - 1) % n)) "$w" "$round"; done
    done
done

OUT_JSON=$ROOT/bench/results/poll-cost-$(date -u +%Y%m%dT%H%M%SZ).json
mkdir -p "$ROOT/bench/results"
MEDIANS=$(jq -s '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    group_by(.workload + "|" + .backend) | map({
        workload: .[0].workload, backend: .[0].backend, runs: length,
        iops: (map(.iops) | median), p50_us: (map(.latency.p50_us) | median), p99_us: (map(.latency.p99_us) | median),
        cpu_us_per_io: (map(.backend_cpu_us_per_io) | if any(. == null) then null else median end),
        cores: (map(if .elapsed_s > 0 and .backend_cpu_s != null then .backend_cpu_s / .elapsed_s else null end)
                | if any(. == null) then null else median end),
        cores_min: (map(if .elapsed_s > 0 and .backend_cpu_s != null then .backend_cpu_s / .elapsed_s else 0 end) | min),
        cores_max: (map(if .elapsed_s > 0 and .backend_cpu_s != null then .backend_cpu_s / .elapsed_s else 0 end) | max),
        idle_cpu_percent: (map(.backend_idle_cpu_percent) | if any(. == null) then null else median end),
        idle_cpu_percent_max: (map(.backend_idle_cpu_percent // 0) | max),
        load1: (map(.load1 // 0) | median)})' "$RUNS")
jq -n --slurpfile runs "$RUNS" --argjson medians "$MEDIANS" --arg checkout "$(git -C "$ROOT" rev-parse --short HEAD)" \
    --argjson rounds "$ROUNDS" --argjson runtime "$RUNTIME" --argjson poll_us "$POLL_US" --argjson idle "$IDLE" \
    '{checkout_head: $checkout, rounds: $rounds, runtime_s: $runtime, idle_s: $idle, poll_us: $poll_us,
      medians: $medians, runs: $runs}' >"$OUT_JSON"
log "wrote $OUT_JSON"

echo "#### poll-cost: paced requests and an idle queue ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo
echo "- Machine: $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores, kernel $(uname -r)"
for ((k = 0; k < n; k++)); do
    echo "- ${LABELS[$k]}: sha256 $(sha256sum "${BINS[$k]}" | cut -c1-12), --poll-us $POLL_US, --engine null"
done
echo "- Daemon on CPU $BCPU, generator on CPU $GCPU; 4 KiB randread, depth 1, poll completion; $RUNTIME s + $RAMP s"
echo "  ramp per paced run, $IDLE s idle; medians of $ROUNDS round(s); raw: ${OUT_JSON#"$ROOT"/bench/}"
echo
echo "| workload | daemon | IOPS | p50 µs | p99 µs | CPU µs/IO | daemon cores (min–max) | idle CPU % of a core (max) | load1 |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
jq -r '
    def f(d): if . == null then "–" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
    sort_by((.workload | if . == "idle" then 1e9 else (split(":")[1] | tonumber) end), .backend)[] |
    if .workload == "idle" then
        "| idle | \(.backend) | – | – | – | – | – | \(.idle_cpu_percent | f(2)) (\(.idle_cpu_percent_max | f(2))) | \(.load1) |"
    else
        "| think \(.workload | split(":")[1]) µs | \(.backend) | \(.iops | f(0)) | \(.p50_us | f(2)) | \(.p99_us | f(2)) | \(.cpu_us_per_io | f(3)) | \(.cores | f(2)) (\(.cores_min | f(2))–\(.cores_max | f(2))) | – | \(.load1) |"
    end' <<<"$MEDIANS"
