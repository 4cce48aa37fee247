# shellcheck shell=bash
# Sourced by the entry scripts: puts Swift on PATH where this project's machines install it.
if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
    export PATH=/opt/swift/usr/bin:$PATH
fi
