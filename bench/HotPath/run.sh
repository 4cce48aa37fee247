#!/usr/bin/env bash
# Hot-path benchmark of the virtio-blk data path (see README.md).
#
#   ./run.sh                 both parts below
#   ./run.sh bench           ordo-one/benchmark: wall time per request, mallocs; exits non-zero if any
#                            variant allocates (p90 of mallocCountTotal per 1000 requests above 0)
#   ./run.sh instructions    callgrind: instructions per request, per variant
#
# Everything builds in release inside this directory (.build/), never touching the main package's build.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=/opt/swift/usr/bin:$PATH

what=${1:-all}
variants=(read-direct-b40 read-indirect-b40 read-direct-eventidx-b40 write-direct-b40 read-direct-b1
          read-direct-eventidx-inflight-b40 uring-read-direct-b40 aio-read-direct-b40)

bench() {
    # Store the run as a baseline, print it, then check it against Thresholds/ (mallocCountTotal = 0):
    # one run of the benchmarks serves both the table and the gate.
    swift package --allow-writing-to-package-directory benchmark baseline update hotpath --no-progress
    # Values marked "*" are per request (each iteration is 1000 requests, scalingFactor .kilo).
    swift package benchmark baseline read hotpath --no-progress
    # Exit code 2 from the tool (the plugin then fails) when a variant allocates.
    swift package benchmark thresholds check hotpath --no-progress
}

instructions() {
    swift build -c release --product hotpath-instructions
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    # valgrind 3.19 rejects the DWARF that Swift emits; the symbol table is enough for callgrind.
    cp .build/release/hotpath-instructions "$work/"
    strip --strip-debug "$work/hotpath-instructions"
    local short=1000 long=2000
    printf '%-26s %10s\n' variant instr/req
    for v in "${variants[@]}"; do
        local counts=()
        for passes in $short $long; do
            # Collect only inside measured(): setup, verification and warm-up stay out of the count.
            valgrind --tool=callgrind --callgrind-out-file="$work/cg.$v.$passes" \
                --toggle-collect='$s20hotpath_instructions8measured*' \
                "$work/hotpath-instructions" "$v" "$passes" >"$work/out" 2>&1 \
                || { cat "$work/out"; return 1; }
            counts+=("$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/out")")
        done
        local batch=40
        [[ $v == *-b1 ]] && batch=1
        # The difference of two lengths cancels whatever the collection boundary itself costs.
        awk -v v="$v" -v a="${counts[0]}" -v b="${counts[1]}" -v n=$(((long - short) * batch)) \
            'BEGIN { printf "%-26s %10.1f\n", v, (b - a) / n }'
    done
    if [[ ${KEEP_CALLGRIND:-0} == 1 ]]; then
        cp "$work"/cg.* . && echo "callgrind profiles kept in $(pwd) (callgrind_annotate cg.<variant>.$short)"
    fi
}

case $what in
    bench) bench ;;
    instructions) instructions ;;
    all) bench; instructions ;;
    *) echo "usage: $0 [bench|instructions]" >&2; exit 2 ;;
esac
