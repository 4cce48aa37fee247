#!/usr/bin/env bash
# fio-uring-fixedbufs.sh: does io_uring with registered buffers pay on this disk? Host fio, no
# vhost-user: the same 4 KiB random I/O at depth 32, O_DIRECT, on one 1 GiB raw image, with
#   uring        ioengine=io_uring, registerfiles=1, fixedbufs=0  (what --engine uring does)
#   uring-fixed  ioengine=io_uring, registerfiles=1, fixedbufs=1  (READ_FIXED/WRITE_FIXED)
#   libaio       ioengine=libaio                                    (what --engine aio does)
# each pinned to one CPU, the three one after the other in every round. Reports fio's CPU time
# (usr + sys) per I/O: the cost registered buffers would save (pinning each buffer's pages per
# request) is CPU, not IOPS, which the disk bounds.
#
# Usage: bench/fio-uring-fixedbufs.sh [--rounds 3] [--runtime 6] [--cpu 1]
# Prints a markdown table of medians on stdout; every run goes to stderr as a JSON line.
# Environment: BENCH_TMPDIR (default /var/tmp; not tmpfs).
set -euo pipefail

VTEST_PROG=fio-uring-fixedbufs
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/guest/lib.sh
source "$ROOT/scripts/guest/lib.sh"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

ROUNDS=3 RUNTIME=6 CPU=1
while (($#)); do
    (($# >= 2)) || die "$1 needs a value"
    case $1 in
        --rounds) ROUNDS=$2 ;;
        --runtime) RUNTIME=$2 ;;
        --cpu) CPU=$2 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift 2
done

ensure_packages fio jq
WORK=''
trap '[[ -n $WORK ]] && rm -rf "$WORK"' EXIT
bench_workdir vub-fixedbufs
IMG=$WORK/disk.img
bench_image "$IMG" 1024 # 1 GiB: 262144 random 4 KiB blocks, written in full (see bench_image)
RUNS=$WORK/runs.jsonl

for ((round = 1; round <= ROUNDS; round++)); do
    for rw in randread randwrite; do
        for v in uring uring-fixed libaio; do
            case $v in
                uring) engine=(--ioengine=io_uring --registerfiles=1 --fixedbufs=0) ;;
                uring-fixed) engine=(--ioengine=io_uring --registerfiles=1 --fixedbufs=1) ;;
                libaio) engine=(--ioengine=libaio) ;;
            esac
            # Batches of 8 submitted and at least 1 reaped per call: close to what a queue worker
            # does with a guest that keeps 32 requests in flight.
            taskset -c "$CPU" fio --name=x --filename="$IMG" --direct=1 "${engine[@]}" --rw="$rw" --bs=4k \
                --iodepth=32 --iodepth_batch_submit=8 --iodepth_batch_complete_min=1 --time_based \
                --ramp_time=1 --runtime="$RUNTIME" --output-format=json |
                jq -c --arg v "$v" --arg rw "$rw" --argjson r "$round" --arg load "$(cut -d' ' -f1 /proc/loadavg)" '
                    .jobs[0] as $j | ($j | if $rw == "randread" then .read else .write end) as $d |
                    {variant: $v, rw: $rw, round: $r, load1: ($load | tonumber), iops: $d.iops,
                     cpu_us_per_io: (($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime * 1000 / $d.total_ios)}' |
                tee -a "$RUNS" >&2
        done
    done
done

echo "| workload | variant | CPU µs/IO (median, min–max) | IOPS (median) | load1 (median) |"
echo "|---|---|---:|---:|---:|"
jq -rs '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r(d): (. * pow(10; d) | round) / pow(10; d);
    group_by(.rw + .variant)[] |
    "| \(.[0].rw) | \(.[0].variant) | \(map(.cpu_us_per_io) | median | r(2)) (\(map(.cpu_us_per_io) | min | r(2))–\(map(.cpu_us_per_io) | max | r(2))) | \(map(.iops) | median | round) | \(map(.load1) | median) |"' "$RUNS"
