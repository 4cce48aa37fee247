#!/usr/bin/env bash
# test.sh: the project's whole test suite, from a fresh Debian 12 machine.
#   1. installs what is missing (scripts/setup.sh)
#   2. unit, protocol, hostile-input and daemon integration tests, and the load generator's tests
#      (swift test)
#   3. the hot-path benchmark, which fails if the per-request path allocates (bench/HotPath)
#   4. the same suite under AddressSanitizer (+ LeakSanitizer) and ThreadSanitizer, daemon included
#      (scripts/sanitizers.sh)
#   5. a bounded libFuzzer run (30 s per target) of the message decoder, a whole session and the
#      descriptor-chain parser, from the committed seed corpus (fuzz/run.sh)
#   6. end-to-end: a Linux guest in QEMU 7.2 (TCG) on our socket with 1 and 2 queues, checking
#      capacity, queues, serial, mkfs/fsck, discard, write-zeroes, flush, fio crc32c verify, hugepage
#      guest memory, then a daemon restart and a read-back of data written before it, a daemon
#      restart under a running guest, QEMU killed mid-I/O, a guest reboot and a QMP system_reset
#      during fio (second boot checked), and the daemon SIGKILLed 5 times during fio with verify
#      (scripts/e2e.sh).
# Exit status 0 only if everything passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

bash scripts/setup.sh

echo "== swift test"
# Parallel: the suites share nothing but the machine (each test has its own temp dir and socket).
mkdir -p .build
swift test --parallel 2>&1 | tee .build/swift-test.log
grep -Eq "Test run with [0-9]+ tests? (in [0-9]+ suites? )?passed" .build/swift-test.log \
    || { echo "swift test did not report a passing run"; exit 1; }

echo "== hot-path benchmark: fails if a request allocates"
bash bench/HotPath/run.sh bench

echo "== the suite under ASan and TSan"
bash scripts/sanitizers.sh all

echo "== fuzzing, 30 s per target"
bash fuzz/run.sh 30

echo "== end-to-end guest tests"
bash scripts/guest/build-artifacts.sh
BACKEND=ours DAEMON=.build/debug/vhost-user-blk bash scripts/e2e.sh
