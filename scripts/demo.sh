#!/usr/bin/env bash
# demo.sh: the main job on a fresh Debian 12 machine. Installs what is missing, builds the daemon
# (release), starts it on a default image, boots a small Linux guest in QEMU on it and prints what the
# guest sees: the disk, its queues and serial, a file system made and checked on it, and fio's verify.
#
#   scripts/demo.sh [--image PATH] [--size 1G] [--queues 2] [--memory memfd|hugepages]
#
# The image defaults to .demo/disk.img (sparse, created on first use and kept between runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

IMAGE=.demo/disk.img SIZE=1G QUEUES=2 MEMORY=memfd
while (($#)); do
    case $1 in
        --image) IMAGE=$2 ;;
        --size) SIZE=$2 ;;
        --queues) QUEUES=$2 ;;
        --memory) MEMORY=$2 ;;
        *) echo "usage: $0 [--image PATH] [--size 1G] [--queues N] [--memory memfd|hugepages]" >&2; exit 2 ;;
    esac
    shift 2
done

bash scripts/setup.sh
echo "== building (release)"
swift build -c release --product vhost-user-blk 2>&1 | tail -1
bash scripts/guest/build-artifacts.sh

mkdir -p "$(dirname "$IMAGE")"
WORK=$(mktemp -d /tmp/vhost-user-blk-demo.XXXXXX)
SOCK=$WORK/vhost-user-blk.sock
DAEMON_PID=
cleanup() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true
    fi
    if [[ $MEMORY == hugepages ]]; then bash qemu-configs/setup-hugepages.sh --release >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ $MEMORY == hugepages ]] && bash qemu-configs/setup-hugepages.sh

echo "== starting vhost-user-blk on $IMAGE ($SIZE, $QUEUES queues)"
.build/release/vhost-user-blk --socket "$SOCK" --backing "$IMAGE" --size "$SIZE" --queues "$QUEUES" \
    --serial demo-disk 2> >(sed 's/^/daemon: /' >&2) &
DAEMON_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.1; done   # bounded: 10 s
[[ -S $SOCK ]] || { echo "daemon did not start"; exit 1; }

SECTORS=$(( $(stat -c %s "$IMAGE") / 512 ))
echo "== booting a Linux guest on it (QEMU, TCG)"
bash scripts/guest/run-guest.sh --socket "$SOCK" --queues "$QUEUES" --mode full --memory "$MEMORY" \
    --capacity-sectors "$SECTORS" --serial demo-disk --log "$WORK/guest.log"
echo "== the guest's disk, as it saw it"
grep -E "VTEST-(INFO|RESULT)" "$WORK/guest.log" | sed 's/^VTEST-//'
