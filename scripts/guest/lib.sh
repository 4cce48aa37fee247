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
