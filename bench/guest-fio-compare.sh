#!/usr/bin/env bash
# guest-fio-compare.sh: our vhost-user-blk daemon against qemu-storage-daemon
# (qsd), driven by fio in a Linux guest.
#
# Usage:
#   bench/guest-fio-compare.sh [--rounds 3] [--runtime 15] [--queues 1]
#                              [--poll-us 50] [--jobs 1] [--cpus LIST|none]
#
#   --rounds N    rounds; each round runs every workload on both back-ends
#   --runtime S   seconds fio measures per run (after a 2 s ramp)
#   --queues N    virtqueues offered by both back-ends and used by the guest
#   --poll-us N   our daemon's --poll-us (longest busy-poll; 0 = never sleep)
#   --jobs J      fio jobs in the guest (each at iodepth 32)
#   --cpus C      our daemon's --cpus (default: none given, the daemon places
#                 its workers and adapts to shared cores)
#
# For every round and workload (4 KiB randread, 4 KiB randwrite, iodepth 32)
# the two back-ends run one after the other on the same 1 GiB raw image, and
# which one goes first alternates from round to round, so slow drifts of the
# machine (another user's build starting, page cache, disk state) hit both.
# Each run: start the back-end, boot the guest in bench mode
# (scripts/guest/init.sh), read the back-end's CPU time (utime + stime from
# /proc/PID/stat) when the guest prints VTEST-BENCH-START and again at
# VTEST-BENCH-STOP, stop the back-end. CPU µs per I/O = that CPU time / the
# requests the guest's disk completed between the two markers.
#
# Prints a markdown report (machine, medians, ratios ours/qsd, spread) on
# stdout and writes every run plus the medians as JSON to
# bench/results/guest-fio-<UTC date-time>-q<N>-poll<N>.json. Progress goes to
# stderr. Under TCG the guest, not the back-end, limits IOPS: read
# bench/README.md before quoting any number.
#
# Environment:
#   BENCH_TMPDIR  where the image and socket go (default /var/tmp; must not be
#                 tmpfs, which has no O_DIRECT)
set -euo pipefail

VTEST_PROG=guest-fio-compare
# EPOCHREALTIME and the numbers handed to jq must use "." as decimal point.
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/guest/lib.sh
source "$ROOT/scripts/guest/lib.sh"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit "$1"; }

ROUNDS=3 RUNTIME=15 QUEUES=1 POLL_US=50 JOBS=1 CPUS=''
while (($#)); do
    [[ $1 == -h || $1 == --help ]] && usage 0
    (($# >= 2)) || die "$1 needs a value (see --help)"
    case $1 in
        --rounds) ROUNDS=$2 ;;
        --runtime) RUNTIME=$2 ;;
        --queues) QUEUES=$2 ;;
        --poll-us) POLL_US=$2 ;;
        --jobs) JOBS=$2 ;;
        --cpus) CPUS=$2 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift 2
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive number of seconds"
[[ $QUEUES =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
[[ $POLL_US =~ ^[0-9]+$ ]] || die "--poll-us must be a non-negative integer"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer"

WORKLOADS=(randread randwrite)
BS=4k
IODEPTH=32      # per job; enough outstanding requests to keep a back-end busy
RAMP=2          # s of fio ramp_time, as in init.sh's default (not measured by fio)
IMG_MIB=1024    # 1 GiB: random offsets spread over 262144 4 KiB blocks, and it is
                # written in full once at start-up in a few seconds
GUEST_SMP=2     # run-guest.sh's default, stated so that it is in the report
GUEST_MEM=512M  # run-guest.sh's default
# A guest boots in ~5-15 s under TCG (more on a loaded machine); 180 s of
# headroom on top of the fio time only trips on a hang.
GUEST_TIMEOUT=$((RAMP + RUNTIME + 180))
READY_TIMEOUT=30 # s; a back-end needs well under a second to listen
STOP_TIMEOUT=30  # s; SIGTERM ends a back-end in well under a second
POLL=0.02        # s between looks at the serial log / socket: at most 20 ms of
                 # back-end CPU is misattributed per marker, <0.3% of a 15 s run

bench_cleanup_on_exit

# ss (iproute2) observes readiness; qemu-system-x86 brings qemu-system-common,
# which has qemu-storage-daemon; jq builds the JSON and the tables.
ensure_packages iproute2 coreutils util-linux qemu-system-x86 jq
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found"

# Built (or found cached) once up front, so a broken build is reported before
# any measurement; run-guest.sh then only checks the cache.
"$ROOT/scripts/guest/build-artifacts.sh" >/dev/null

bench_workdir vub-bench
SOCK=$WORK/vhost.sock
IMG=$WORK/disk.img
RUNS=$WORK/runs.jsonl
: >"$RUNS"
bench_daemon "$ROOT" "$WORK"
bench_image "$IMG" "$IMG_MIB"

CLK_TCK=$(getconf CLK_TCK)
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
CORES=$(nproc)
KERNEL=$(uname -r)
QEMU_VERSION=$(qemu-system-x86_64 --version | head -n 1)
QSD_VERSION=$(qemu-storage-daemon --version | head -n 1)



# start_backend ours|qsd LOG: starts it (BPID) and waits until it listens.
start_backend() {
    local which=$1 blog=$2
    rm -f "$SOCK"
    case $which in
        ours)
            "$DAEMON" --socket "$SOCK" --backing "$IMG" --queues "$QUEUES" --poll-us "$POLL_US" ${CPUS:+--cpus "$CPUS"} \
                </dev/null >"$blog" 2>&1 &
            ;;
        qsd)
            start_qsd "$SOCK" "$IMG" "$QUEUES" "$blog"
            ;;
    esac
    BPID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        kill -0 "$BPID" 2>/dev/null || { BPID=; die "$which exited before listening: $(tail -n 3 "$blog")"; }
        # Ours promises a "listening" line on stderr once ready: require it too.
        if socket_listening "$SOCK" && { [[ $which == qsd ]] || grep -q listening "$blog"; }; then
            return 0
        fi
        sleep "$POLL"
    done
    die "$which not listening after ${READY_TIMEOUT}s"
}

# cpu_ticks PID: utime + stime of the whole process (all threads, including
# exited ones), in clock ticks. Fields 14 and 15 of /proc/PID/stat, counted
# after the ")" that ends the command name (which may contain spaces).
cpu_ticks() {
    local line rest
    read -r line <"/proc/$1/stat"
    rest=${line##*) }
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- $rest
    # $1 is field 3 (state), so field 14 is ${12} and field 15 is ${13}.
    echo $((${12} + ${13}))
}

# wait_marker LOG REGEX: returns once the serial log has a line matching
# REGEX; fails if the guest ends first (run-guest.sh bounds its lifetime).
wait_marker() {
    while kill -0 "$CPID" 2>/dev/null; do
        grep -aq "$2" "$1" 2>/dev/null && return 0
        sleep "$POLL"
    done
    grep -aq "$2" "$1" 2>/dev/null
}

# run_one ROUND WORKLOAD BACKEND: one measured run; appends a JSON line to RUNS.
run_one() {
    local round=$1 rw=$2 which=$3
    local tag=r$round-$rw-$which
    local slog=$WORK/serial-$tag.log blog=$WORK/backend-$tag.log gout=$WORK/guest-$tag.out
    local load c0 c1 t0 t1 st=0 bench
    load=$(cut -d' ' -f1 /proc/loadavg)
    start_backend "$which" "$blog"
    "$ROOT/scripts/guest/run-guest.sh" --socket "$SOCK" --queues "$QUEUES" --mode bench \
        --smp "$GUEST_SMP" --mem-size "$GUEST_MEM" --timeout "$GUEST_TIMEOUT" --log "$slog" \
        --guest-param "bench_rw=$rw" --guest-param "bench_bs=$BS" \
        --guest-param "bench_iodepth=$IODEPTH" --guest-param "bench_runtime=$RUNTIME" \
        --guest-param "bench_ramp=$RAMP" --guest-param "bench_jobs=$JOBS" \
        >"$gout" 2>"$WORK/guest-$tag.err" &
    CPID=$!
    if wait_marker "$slog" '^VTEST-BENCH-START'; then
        c0=$(cpu_ticks "$BPID") t0=$EPOCHREALTIME
        if wait_marker "$slog" '^VTEST-BENCH-STOP'; then
            c1=$(cpu_ticks "$BPID") t1=$EPOCHREALTIME
        fi
    fi
    wait "$CPID" || st=$?
    CPID=
    stop_process "$BPID"
    BPID=
    [[ $which == qsd ]] && rm -f "$SOCK" # qsd leaves its socket behind
    if ((st != 0)) || [[ -z ${c1:-} ]]; then
        sed 's/^/  | /' "$WORK/guest-$tag.err" "$gout" >&2
        die "$tag: guest run failed (run-guest status $st)"
    fi
    ((STOP_STATUS == 0)) || die "$tag: $which exited with status $STOP_STATUS on SIGTERM"
    bench=$(tr -d '\r' <"$slog" | sed -n 's/^VTEST-BENCH //p' | tail -n 1)
    [[ -n $bench ]] || die "$tag: no VTEST-BENCH line in the serial log"
    # key=value pairs → a JSON object; every value but rw/bs is a number.
    # shellcheck disable=SC2016 # $kv etc. are jq variables
    jq -cn --arg kv "$bench" --arg backend "$which" --argjson round "$round" \
        --argjson ticks "$((c1 - c0))" --argjson tck "$CLK_TCK" \
        --argjson t0 "$t0" --argjson t1 "$t1" --argjson load "$load" '
        ($kv | split(" ") | map(split("=") | {key: .[0], value: .[1]}) | from_entries
             | with_entries(if .key == "rw" or .key == "bs" then . else .value |= tonumber end)) as $g
        | ($ticks / $tck) as $cpu
        | {round: $round, backend: $backend, workload: $g.rw,
           iops: $g.iops, bw_kib: $g.bw_kib, lat_mean_us: $g.lat_mean_us,
           lat_p50_us: $g.lat_p50_us, lat_p99_us: $g.lat_p99_us,
           fio_ios: $g.ios, dev_ios: $g.dev_ios,
           marker_wall_s: (($t1 - $t0) * 1000 | round / 1000),
           backend_cpu_s: $cpu,
           cpu_us_per_io: ($cpu * 1e6 / $g.dev_ios * 100 | round / 100),
           backend_cores: ($cpu / ($t1 - $t0) * 1000 | round / 1000),
           host_load_1m_before: $load}' >>"$RUNS"
    log "$(tail -n 1 "$RUNS" | jq -r '"\(.workload) \(.backend): \(.iops) IOPS, p50 \(.lat_p50_us) µs, p99 \(.lat_p99_us) µs, back-end \(.backend_cpu_s) s CPU = \(.cpu_us_per_io) µs/IO (\(.backend_cores) cores), load \(.host_load_1m_before)"')"
}

log "rounds=$ROUNDS runtime=${RUNTIME}s queues=$QUEUES poll_us=$POLL_US jobs=$JOBS cpus=${CPUS:-default}; $(( ROUNDS * ${#WORKLOADS[@]} * 2 )) guest boots"
for ((r = 1; r <= ROUNDS; r++)); do
    # Odd rounds start with ours, even rounds with qsd.
    if ((r % 2)); then order=(ours qsd); else order=(qsd ours); fi
    for rw in "${WORKLOADS[@]}"; do
        for b in "${order[@]}"; do
            log "round $r/$ROUNDS: $rw on $b"
            run_one "$r" "$rw" "$b"
        done
    done
done

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
OUT=$ROOT/bench/results/guest-fio-$(date -u -d "$DATE" +%Y%m%dT%H%M%SZ)-q$QUEUES-poll$POLL_US${CPUS:+-cpus${CPUS//,/_}}.json
mkdir -p "$(dirname "$OUT")"
# shellcheck disable=SC2016 # jq program
jq -s --arg date "$DATE" --arg cpu "$CPU_MODEL" --argjson cores "$CORES" --arg kernel "$KERNEL" \
    --arg qemu "$QEMU_VERSION" --arg qsd "$QSD_VERSION" --arg commit "$GIT_COMMIT" \
    --argjson dirty "$GIT_DIRTY" --arg sha "$DAEMON_SHA" --arg built "$DAEMON_MTIME" \
    --argjson rounds "$ROUNDS" --argjson runtime "$RUNTIME" --argjson ramp "$RAMP" \
    --argjson queues "$QUEUES" --argjson poll "$POLL_US" --argjson jobs "$JOBS" --arg cpus "${CPUS:-default}" \
    --argjson iodepth "$IODEPTH" --arg bs "$BS" --argjson img "$IMG_MIB" \
    --argjson smp "$GUEST_SMP" --arg mem "$GUEST_MEM" --argjson elapsed "$((SECONDS - T_START))" '
    def median: sort | length as $n | if $n % 2 == 1 then .[($n - 1) / 2] else (.[$n / 2 - 1] + .[$n / 2]) / 2 end;
    def metrics: ["iops", "lat_p50_us", "lat_p99_us", "cpu_us_per_io", "backend_cores"];
    . as $runs
    | [group_by(.workload, .backend)[] | . as $g
       | {workload: $g[0].workload, backend: $g[0].backend, runs: length}
         + (reduce metrics[] as $m ({}; . + {($m): ([$g[][$m]] | median),
                                              ($m + "_min"): ([$g[][$m]] | min),
                                              ($m + "_max"): ([$g[][$m]] | max)}))] as $med
    | [$med | group_by(.workload)[]
       | (map(select(.backend == "ours"))[0]) as $o | (map(select(.backend == "qsd"))[0]) as $q
       | {workload: $o.workload}
         + (reduce metrics[] as $m ({}; . + {($m): (if $q[$m] == 0 then null else ($o[$m] / $q[$m] * 100 | round / 100) end)}))] as $ratios
    | {date: $date,
       machine: {cpu_model: $cpu, cores: $cores, kernel: $kernel, qemu: $qemu, qemu_storage_daemon: $qsd,
                 accel: "tcg", guest_vcpus: $smp, guest_memory: $mem},
       daemon: {checkout_head: $commit, sources_dirty: $dirty, binary_built: $built, sha256: $sha},
       config: {rounds: $rounds, runtime_s: $runtime, ramp_s: $ramp, queues: $queues, poll_us: $poll, cpus: $cpus,
                jobs: $jobs, iodepth: $iodepth, bs: $bs, image_mib: $img,
                qsd_blockdev: "driver=file,aio=native,cache.direct=on"},
       elapsed_s: $elapsed,
       note: "TCG guest: IOPS and latency are bounded by the emulated guest, not by the back-ends; cpu_us_per_io = back-end CPU between the VTEST-BENCH-START/STOP markers / requests the guest disk completed in that window (ramp included).",
       runs: $runs, medians: $med, ratios_ours_over_qsd: $ratios}' "$RUNS" >"$OUT"
log "wrote $OUT"

# The markdown report.
# shellcheck disable=SC2016 # jq program
jq -r '
    def f(d): if . == null then "n/a" else (. * pow(10; d) | round / pow(10; d) | tostring) end;
    "### Guest fio: ours vs qemu-storage-daemon (\(.date))",
    "",
    "- Machine: \(.machine.cpu_model), \(.machine.cores) cores, kernel \(.machine.kernel), \(.machine.qemu) (\(.machine.accel), \(.machine.guest_vcpus) vCPUs, \(.machine.guest_memory))",
    "- Peer: \(.machine.qemu_storage_daemon), \(.config.qsd_blockdev)",
    "- Ours: binary built \(.daemon.binary_built) (sha256 \(.daemon.sha256[0:12])), checkout at \(.daemon.checkout_head)\(if .daemon.sources_dirty then " + uncommitted source changes" else "" end), --poll-us \(.config.poll_us), --cpus \(.config.cpus // "default")",
    "- Workload: \(.config.bs) \(.config.iodepth) deep x \(.config.jobs) job(s), \(.config.queues) queue(s), \(.config.runtime_s) s + \(.config.ramp_s) s ramp, 1 GiB raw image; medians of \(.config.rounds) alternating round(s)",
    "",
    "| workload | back-end | guest IOPS | p50 µs | p99 µs | back-end CPU µs/IO | back-end cores |",
    "|---|---|---:|---:|---:|---:|---:|",
    (.medians[] | "| \(.workload) | \(.backend) | \(.iops | f(0)) | \(.lat_p50_us | f(1)) | \(.lat_p99_us | f(1)) | \(.cpu_us_per_io | f(2)) | \(.backend_cores | f(2)) |"),
    (.ratios_ours_over_qsd[] | "| \(.workload) | **ours/qsd** | \(.iops | f(2)) | \(.lat_p50_us | f(2)) | \(.lat_p99_us | f(2)) | \(.cpu_us_per_io | f(2)) | \(.backend_cores | f(2)) |"),
    "",
    "Spread (min–max over rounds):",
    "",
    "| workload | back-end | guest IOPS | p50 µs | p99 µs | CPU µs/IO |",
    "|---|---|---:|---:|---:|---:|",
    (.medians[] | "| \(.workload) | \(.backend) | \(.iops_min | f(0))–\(.iops_max | f(0)) | \(.lat_p50_us_min | f(1))–\(.lat_p50_us_max | f(1)) | \(.lat_p99_us_min | f(1))–\(.lat_p99_us_max | f(1)) | \(.cpu_us_per_io_min | f(2))–\(.cpu_us_per_io_max | f(2)) |"),
    "",
    "Host 1-min load average before each run: \([.runs[].host_load_1m_before] | map(tostring) | join(", ")); elapsed \(.elapsed_s) s."
' "$OUT"
