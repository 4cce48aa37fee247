#!/usr/bin/env bash
# sanitizers.sh: the `swift test` suite under AddressSanitizer (with LeakSanitizer) and ThreadSanitizer.
#
#   scripts/sanitizers.sh [address|thread|all]        (default: all)
#
# For each sanitizer:
#   1. builds everything, tests and the daemon included (`swift build --build-tests --sanitize=X`), in
#      its own scratch path (.build-asan, .build-tsan), so the ordinary .build is left alone;
#   2. checks that the test executable and the daemon binary both carry the sanitizer runtime: the
#      integration tests spawn that daemon (VHOST_USER_BLK_BIN points them at it), so it must be the
#      sanitized build too;
#   3. runs the suite with ASAN_OPTIONS / TSAN_OPTIONS sending every report to a file in
#      <scratch>/sanitizer-reports/ (log_path), so reports from daemon child processes are not lost in
#      a stderr that a test reads or throws away;
#   4. fails if the suite fails or if any report file exists, printing each report (demangled).
# Reports stay in <scratch>/sanitizer-reports/ after the run (CI can keep them as artifacts).
#
# ASan: halt_on_error=1 (ASan cannot go on after an error anyway), leaks checked at every process
# exit. TSan: halt_on_error=0, so one run collects every race instead of stopping at the first;
# exitcode=66 still makes a process that reported anything exit non-zero. Suppressions, if ever
# needed, go in scripts/asan.supp, scripts/lsan.supp or scripts/tsan.supp (used when present; each
# entry must say why it is safe).
#
# Environment: SANITIZER_TIMEOUT seconds per suite run (default 1800).
# Ends with e.g. "sanitizers: address passed, thread passed"; exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

ROOT=$PWD
case ${1:-all} in
    address | thread) SANITIZERS=("$1") ;;
    all) SANITIZERS=(address thread) ;;
    *) echo "usage: $0 [address|thread|all]" >&2; exit 2 ;;
esac

SYMBOLIZER=$(command -v llvm-symbolizer || true)
DEMANGLE=$(command -v swift-demangle || echo cat)
RESULTS=()

# run_sanitizer NAME: build, check, run and scan one sanitizer; returns non-zero on any failure.
run_sanitizer() {
    local san=$1 short scratch reports log bin daemon opts t0 t_build t_test rc=0
    case $san in
        address) short=asan ;;
        thread) short=tsan ;;
    esac
    scratch=.build-$short
    reports=$ROOT/$scratch/sanitizer-reports
    log=$ROOT/$scratch/swift-test.log
    mkdir -p "$scratch"
    rm -rf "$reports"
    mkdir -p "$reports"

    echo "== $san: building ($scratch)"
    t0=$SECONDS
    if ! swift build --build-tests --sanitize="$san" --scratch-path "$scratch" >"$scratch/build.log" 2>&1; then
        tail -n 40 "$scratch/build.log"
        echo "$san: build failed (full log: $scratch/build.log)"
        return 1
    fi
    t_build=$((SECONDS - t0))
    bin=$(swift build --sanitize="$san" --scratch-path "$scratch" --show-bin-path)
    daemon=$bin/vhost-user-blk
    # The runtime is linked statically: its entry point must be defined in both executables. (grep
    # reads all of nm's output: `grep -q` could exit first and fail the pipe under pipefail.)
    for exe in "$daemon" "$bin/VhostUserBlkPackageTests.xctest"; do
        if ! nm "$exe" 2>/dev/null | grep " T __${short}_init$" >/dev/null; then
            echo "$san: $exe does not contain the $san runtime (__${short}_init)"
            return 1
        fi
    done
    echo "   built in ${t_build}s; test executable and daemon both link the $san runtime"

    case $san in
        address)
            opts="log_path=$reports/asan:halt_on_error=1:exitcode=66:detect_leaks=1:abort_on_error=0"
            [[ -f scripts/asan.supp ]] && opts+=":suppressions=$ROOT/scripts/asan.supp"
            export ASAN_OPTIONS=$opts
            if [[ -f scripts/lsan.supp ]]; then export LSAN_OPTIONS="suppressions=$ROOT/scripts/lsan.supp"; fi
            if [[ -n $SYMBOLIZER ]]; then export ASAN_SYMBOLIZER_PATH=$SYMBOLIZER; fi
            ;;
        thread)
            opts="log_path=$reports/tsan:halt_on_error=0:exitcode=66:second_deadlock_stack=1"
            [[ -f scripts/tsan.supp ]] && opts+=":suppressions=$ROOT/scripts/tsan.supp"
            [[ -n $SYMBOLIZER ]] && opts+=":external_symbolizer_path=$SYMBOLIZER"
            export TSAN_OPTIONS=$opts
            ;;
    esac
    export VHOST_USER_BLK_BIN=$daemon

    echo "== $san: swift test (parallel)"
    t0=$SECONDS
    # --skip-build: what runs is exactly what was checked above.
    timeout --kill-after=30 "${SANITIZER_TIMEOUT:-1800}" \
        swift test --sanitize="$san" --scratch-path "$scratch" --skip-build --parallel >"$log" 2>&1 || rc=$?
    t_test=$((SECONDS - t0))
    unset ASAN_OPTIONS LSAN_OPTIONS TSAN_OPTIONS VHOST_USER_BLK_BIN
    grep -E "^(✘|✔ Test run)|[0-9]+ tests? failed" "$log" | tail -n 20 || true
    echo "   suite ran in ${t_test}s (exit status $rc; log: $scratch/swift-test.log)"
    if ((rc == 124 || rc == 137)); then echo "$san: the suite did not finish within ${SANITIZER_TIMEOUT:-1800}s"; fi
    if ((rc == 0)) && ! grep -Eq "Test run with [0-9]+ tests? (in [0-9]+ suites? )?passed" "$log"; then
        echo "$san: swift test did not report a passing run"
        rc=1
    fi

    local files=() f
    while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$reports" -type f -size +0 -print0)
    for f in "${files[@]}"; do
        echo "---- $san report: $f"
        "$DEMANGLE" <"$f"
    done
    if ((${#files[@]} > 0)); then
        echo "$san: ${#files[@]} process(es) wrote sanitizer reports (kept in $scratch/sanitizer-reports)"
        rc=1
    fi
    return "$rc"
}

for san in "${SANITIZERS[@]}"; do
    if run_sanitizer "$san"; then
        RESULTS+=("$san passed")
    else
        RESULTS+=("$san FAILED")
    fi
done

summary=$(printf '%s, ' "${RESULTS[@]}")
echo "sanitizers: ${summary%, }"
[[ $summary != *FAILED* ]]
