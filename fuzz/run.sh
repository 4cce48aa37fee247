#!/usr/bin/env bash
# libFuzzer targets of the vhost-user-blk back-end (see README.md).
#
#   ./run.sh [SECONDS] [TARGET...]   build, then fuzz each target for SECONDS (default 30) starting
#                                    from corpus/<target>; all three targets when none is named
#
# Exits non-zero when any target crashed, hung (an input over the per-input timeout), leaked (ASan's
# LeakSanitizer) or ran out of memory; the input that did it is kept in artifacts/ (gitignored), and
# `.build/release/<target> artifacts/<file>` replays it. Inputs the run found are kept in work/<target>
# (gitignored) and reused by the next run; the committed seeds are never modified.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=/opt/swift/usr/bin:$PATH
# The Swift runtime's crash backtracer would take over libFuzzer's crash path (and can take minutes
# or stall there); libFuzzer and ASan print the stack themselves.
export SWIFT_BACKTRACE=enable=no

seconds=${1:-30}
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(fuzz-request fuzz-session fuzz-blkqueue)

# Every module, the root package's included, is built with coverage instrumentation and ASan: the
# Swift ones through -sanitize, the C shim (CVhostLinux: eventfd, memfd, aio and io_uring calls) through
# -Xcc, since -Xswiftc flags never reach clang. fuzzer-no-link: libFuzzer's main is linked once, by swiftc.
# lld instead of the default gold: gold fails on the sanitizer runtimes with an internal error.
build_start=$SECONDS
swift build -c release \
    -Xswiftc -sanitize=fuzzer,address \
    -Xcc -fsanitize=fuzzer-no-link,address \
    -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
echo "build: $((SECONDS - build_start)) s"

mkdir -p artifacts
failed=()
for t in "${targets[@]}"; do
    mkdir -p "work/$t"
    log=$(mktemp)
    start=$SECONDS
    status=0
    # -timeout: one input taking longer is a hang and fails the run. -max_len: the largest seed is a
    # 1024-entry ring's image (~26 KiB); larger inputs add nothing. -rss_limit_mb: a leak or runaway
    # allocation fails instead of taking the machine's memory.
    ".build/release/$t" "work/$t" "corpus/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=32768 \
        -artifact_prefix="artifacts/$t-" -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
    if [[ $status -ne 0 ]]; then
        failed+=("$t")
        echo "$t: FAILED (exit $status) after $((SECONDS - start)) s; last 60 lines:"
        tail -60 "$log"
        ls -1 artifacts/"$t"-* 2>/dev/null | sed 's/^/  reproducer: /'
    else
        echo "$t: ${execs:-?} executions in $((SECONDS - start)) s ($cov), no crash, hang or leak"
    fi
    rm -f "$log"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all ${#targets[@]} target(s) passed"
