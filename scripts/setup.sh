#!/usr/bin/env bash
# setup.sh: make a fresh Debian 12 machine able to build, test and run VhostUserBlk.
# Idempotent: installs only what is missing, so a second run costs a few dpkg queries.
#   - build: Swift (expected at /opt/swift, as on this project's machines), libaio, libnuma, liburing
#   - guest tests and demo: QEMU 7.2 (TCG), qemu-storage-daemon (the peer), fio, busybox, e2fsprogs,
#     python3 (scripts/guest/qmp.py, the QMP client of the reset test)
set -euo pipefail
VTEST_PROG=setup
# shellcheck source=scripts/guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest/lib.sh"

ensure_packages build-essential pkg-config libaio-dev libnuma-dev liburing-dev \
    qemu-system-x86 qemu-utils fio busybox-static e2fsprogs util-linux cpio procps python3

if ! command -v swift >/dev/null 2>&1; then
    [[ -x /opt/swift/usr/bin/swift ]] || die "Swift not found: install Swift 6.x (expected at /opt/swift)"
fi
log "ready"
