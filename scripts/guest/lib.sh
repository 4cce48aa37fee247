# shellcheck shell=bash
# Helpers shared by the guest test scripts. Sourced, never executed: it only
# defines functions so that sourcing it has no side effects.

# Messages go to stderr so that stdout stays free for machine-readable output.
log() { printf '%s: %s\n' "${VTEST_PROG:-${0##*/}}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Set once apt-get update has run in this process, so a script that installs
# in several steps refreshes the package lists only once.
_VTEST_APT_UPDATED=${_VTEST_APT_UPDATED:-0}

apt_update_once() {
    if [[ $_VTEST_APT_UPDATED == 0 ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        _VTEST_APT_UPDATED=1
    fi
}

# ensure_packages PKG...: install the Debian packages that are missing.
# dpkg -s is checked first so that the common case (everything present, as on a
# developer machine or a warm CI cache) costs no network access at all.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}) and not root; install them first"
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# repo_root: the checkout this script lives in (scripts/guest/ is two levels down).
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); }

# stop_process PID: SIGTERM, wait at most STOP_TIMEOUT seconds (default 30: a
# back-end ends in well under a second), then SIGKILL (status 137). The exit
# status lands in STOP_STATUS. Not to be called in $(...): only the shell that
# started the process can wait for it.
STOP_STATUS=0
# shellcheck disable=SC2034 # STOP_STATUS is read by the scripts that source this file
stop_process() {
    local pid=$1 deadline=$((SECONDS + ${STOP_TIMEOUT:-30}))
    STOP_STATUS=0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.02 # poll interval: 20 ms is invisible next to a back-end's shutdown
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still running ${STOP_TIMEOUT:-30}s after SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || STOP_STATUS=$?
}

# socket_listening SOCK: true once something listens on SOCK. Checked with ss
# rather than by connecting: a probe connection would be a real vhost-user
# session to the back-end (which serves one front-end at a time).
socket_listening() { [[ -S $1 ]] && ss -xlH src "$1" 2>/dev/null | grep -q LISTEN; }

# start_qsd SOCK IMG QUEUES LOG: qemu-storage-daemon serving IMG in the
# background ($! is its pid). aio=native + cache.direct=on: O_DIRECT with
# libaio, as ours; discard=unmap: guest discards punch holes in the image.
start_qsd() {
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=f0,filename=$2,aio=native,cache.direct=on,discard=unmap" \
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$1,writable=on,num-queues=$3" \
        </dev/null >"$4" 2>&1 &
}
