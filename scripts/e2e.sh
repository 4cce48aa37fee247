#!/usr/bin/env bash
# e2e.sh: end-to-end test of a vhost-user-blk backend with a real Linux guest.
#
# For each queue count in QUEUES_LIST, against one 256 MiB sparse raw image:
#   1. start the backend, wait until its socket accepts connections
#   2. boot the guest in `full` mode (identity, ext4, raw patterns, discard,
#      write zeroes, FLUSH, fio verify over all queues, persistence write)
#   3. stop the backend with SIGTERM: it must exit 0 (and, for ours, remove
#      its socket)
#   4. start the backend again on the same image
#   5. boot the guest in `readback` mode: the persistence region must hash to
#      what step 2 wrote, i.e. the data survived the backend restart
#   6. stop the backend again (same checks as 3)
# then, with the largest queue count:
#   - a backend restart while a `full` guest runs (QEMU reconnect=1): the
#     guest's remaining checks must pass on the new process (E2E_RECONNECT=0
#     skips it)
#   - QEMU SIGKILLed while fio writes on every queue: the backend must survive,
#     and a new guest on the same backend process passes `full` (E2E_QEMU_KILL=0
#     skips it)
#   - guest reboot and VM reset while fio writes on every queue, two guests on
#     one backend process (E2E_RESET=0 skips it): the first guest reboots itself
#     (sysrq b) with writes in flight, the second is reset by the host (QMP
#     system_reset); each then boots a second time in the same QEMU process and
#     must pass identity, persistence (data written before the reset), fio
#     write+verify on every queue and a clean kernel log. After each guest the
#     backend must still be alive and listening, with no warning or error in
#     its log
#   - backend SIGKILLed under a running guest (QEMU reconnect=1), E2E_KILL_COUNT
#     (5) times: the guest runs one fio write+verify round per kill over the same
#     32 MiB on every queue (with random reads alongside, so requests complete
#     out of order), each kill lands while the round's writes are in flight and
#     the backend is restarted on the same socket and image; every round, a
#     final verify-only pass and the guest's kernel log must be clean.
#     Needs INFLIGHT_SHMFD, which qemu-storage-daemon 7.2 lacks, so with
#     BACKEND=qsd it is skipped (E2E_KILL=0 skips it)
#   - `full` mode with guest RAM on 2 MiB hugepages (unless MEMORY=hugepages
#     already put every run there, or E2E_HUGEPAGES=0).
# Ends with "e2e: N passed, M failed"; exit status is non-zero on any failure.
#
# Environment:
#   BACKEND      qsd (qemu-storage-daemon, the reference) or ours (default qsd)
#   DAEMON       our daemon binary (default .build/release/vhost-user-blk)
#   QUEUES_LIST  queue counts to test (default "1 2")
#   MEMORY       guest RAM backing: memfd or hugepages (default memfd); with
#                hugepages, 2 MiB pages are reserved for the run and released
#                afterwards (qemu-configs/setup-hugepages.sh)
#   E2E_BASIC    1 (default): steps 1-6 for each queue count; 0: skip them
#                (to iterate on the steps that follow)
#   E2E_HUGEPAGES  1 (default): the extra hugepage run; 0: skip it
#   E2E_RECONNECT  1 (default): the restart-under-a-running-guest run; 0: skip
#   E2E_QEMU_KILL  1 (default): QEMU SIGKILLed during fio, then a new guest on
#                the same backend process; 0: skip
#   E2E_RESET    1 (default): guest reboot and QMP system_reset during fio; 0: skip
#   E2E_KILL     1 (default): backend SIGKILLed under a running guest; 0: skip
#   E2E_KILL_COUNT  how many times (default 5: about half the kills catch
#                requests completing out of order, which only INFLIGHT_SHMFD
#                recovers; without it the guest broke at kill 1, 1, 2, 2, 2,
#                2, 2 and 5 in eight runs)
#   KILL_ROUND_TIMEOUT  seconds the guest may take, after a kill and restart,
#                to reach its next round (or its end) (default 90; a round
#                takes 5-10 s here, up to 20 s with 1 queue on a loaded host)
#   DAEMON_ARGS  extra arguments for our daemon, e.g. "--log-level debug"
#   EXPECT_SERIAL  serial the guest must see; default "vhost_user_blk" for qsd
#                (its fixed serial), "vub-e2e-serial" for ours, which gets it
#                as --serial. Empty: not checked (and not passed).
#   E2E_TMPDIR   where the image, socket and logs go (default /var/tmp; must
#                not be tmpfs, which has no O_DIRECT)
#   E2E_LOGDIR   if set, serial and backend logs are copied there at the end
#   GUEST_TIMEOUT  seconds per guest boot (default 300)
#   READY_TIMEOUT, STOP_TIMEOUT  bounds in seconds on backend start-up and
#                shutdown (default 30 each)
set -euo pipefail

VTEST_PROG=e2e
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/guest/lib.sh
source "$ROOT/scripts/guest/lib.sh"

# The summary line is printed by the EXIT trap, so every way out of this
# script (success, failed checks, a setup error, a signal) ends with it and
# leaves nothing behind.
PASSED=0 FAILED=0 T_START=$SECONDS
WORK=''       # temp dir: image, socket, logs
BPID=''       # running backend
CPID=''       # running run-guest.sh
BLOG=''       # the running backend's log
HUGE_SETUP=0  # 1 while hugepages reserved by us
record() { # record NAME STATUS [DETAIL]
    if [[ $2 == 0 ]]; then
        PASSED=$((PASSED + 1))
        log "PASS $1${3:+ ($3)}"
    else
        FAILED=$((FAILED + 1))
        log "FAIL $1${3:+ ($3)}"
    fi
}
# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
    local rc=$?
    # Ignored, not reset: timeout(1) and a terminal signal the whole process
    # group, so a second INT or TERM can follow the first, and with the default
    # action it would cut the clean-up short (backend, temp dir, no summary).
    trap - EXIT
    trap '' INT TERM
    if [[ -n $CPID ]] && kill -0 "$CPID" 2>/dev/null; then
        # run-guest.sh kills its QEMU in its own trap.
        kill -TERM "$CPID" 2>/dev/null || true
        wait "$CPID" 2>/dev/null || true
    fi
    if [[ -n $BPID ]]; then
        stop_process "$BPID" || true
    fi
    if ((HUGE_SETUP)); then
        "$ROOT/qemu-configs/setup-hugepages.sh" --release || record "hugepages released" 1
    fi
    if [[ -n $WORK ]]; then
        if [[ -n ${E2E_LOGDIR:-} ]] && mkdir -p "$E2E_LOGDIR"; then
            # Best effort: failing to save logs must not change the verdict.
            cp "$WORK"/*.log "$WORK"/*.out "$E2E_LOGDIR"/ 2>/dev/null || true
        fi
        rm -rf "$WORK"
    fi
    # A run cut short (a setup error, a signal) is a failure even if every
    # check so far passed.
    ((rc != 0 && FAILED == 0)) && record "run aborted (exit status $rc)" 1
    log "elapsed $((SECONDS - T_START))s"
    echo "e2e: $PASSED passed, $FAILED failed"
    ((FAILED == 0)) && exit 0
    exit $((rc != 0 ? rc : 1))
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BACKEND=${BACKEND:-qsd}
DAEMON=${DAEMON:-$ROOT/.build/release/vhost-user-blk}
QUEUES_LIST=${QUEUES_LIST:-1 2}
MEMORY=${MEMORY:-memfd}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-300}
IMG_MIB=256                         # small: TCG guests are slow, and the tests use < 100 MiB
CAPACITY_SECTORS=$((IMG_MIB * 2048)) # 2048 512-byte sectors per MiB
READY_TIMEOUT=${READY_TIMEOUT:-30} # s; a backend needs well under a second to listen
STOP_TIMEOUT=${STOP_TIMEOUT:-30}   # s; SIGTERM should end a backend in well under a second
KILL_COUNT=${E2E_KILL_COUNT:-5}
KILL_ROUND_TIMEOUT=${KILL_ROUND_TIMEOUT:-90} # s; a round takes 5-20 s, a restart ~1 s
HUGEPAGES=256                       # 2 MiB pages = run-guest.sh's default 512 MiB of guest RAM
NR_2M=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages

case $BACKEND in
    qsd) EXPECT_SERIAL=${EXPECT_SERIAL-vhost_user_blk} ;;
    ours) EXPECT_SERIAL=${EXPECT_SERIAL-vub-e2e-serial} ;; # <= 20 bytes (virtio-blk ID size)
    *) die "BACKEND must be qsd or ours" ;;
esac
[[ $MEMORY == memfd || $MEMORY == hugepages ]] || die "MEMORY must be memfd or hugepages"
[[ $KILL_COUNT =~ ^[1-9][0-9]*$ ]] || die "E2E_KILL_COUNT must be a positive integer"
[[ $KILL_ROUND_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "KILL_ROUND_TIMEOUT must be seconds"

# ss (iproute2) observes readiness; qemu-system-x86 brings qemu-system-common,
# which has qemu-storage-daemon; python3 runs scripts/guest/qmp.py.
ensure_packages iproute2 coreutils qemu-system-x86 python3
if [[ $BACKEND == qsd ]]; then
    command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found"
else
    [[ -x $DAEMON ]] || die "daemon $DAEMON not found (swift build -c release?)"
fi

WORK=$(mktemp -d "${E2E_TMPDIR:-/var/tmp}/vub-e2e.XXXXXX")
[[ $(stat -f -c %T "$WORK") != tmpfs ]] || die "E2E_TMPDIR is tmpfs (no O_DIRECT); pick a disk-backed directory"
SOCK=$WORK/vhost.sock
# Our own hugepage bookkeeping, so a concurrent user of setup-hugepages.sh
# (the demo, another test run) is not disturbed by our release.
export HUGEPAGES_STATE=$WORK/hugepages.state
IMG=$WORK/disk.img

# start_backend TAG QUEUES [keep-socket]: starts it in the background (BPID,
# its log in BLOG), waits until ready. keep-socket: leave a stale socket file
# for the backend to deal with, as after a crash.
start_backend() {
    local tag=$1 q=$2
    local blog=$WORK/backend-$tag.log
    BLOG=$blog
    [[ ${3:-} == keep-socket ]] || rm -f "$SOCK"
    case $BACKEND in
        qsd)
            start_qsd "$SOCK" "$IMG" "$q" "$blog"
            ;;
        ours)
            local extra=()
            [[ -n $EXPECT_SERIAL ]] && extra+=(--serial "$EXPECT_SERIAL")
            # shellcheck disable=SC2206 # split into words on purpose
            extra+=(${DAEMON_ARGS:-})
            "$DAEMON" --socket "$SOCK" --backing "$IMG" --queues "$q" "${extra[@]}" \
                </dev/null >"$blog" 2>&1 &
            ;;
    esac
    BPID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$BPID" 2>/dev/null; then
            local st=0
            wait "$BPID" || st=$?
            BPID=
            record "$tag: backend start" 1 "exited with $st before listening: $(tail -n 3 "$blog" | tr '\n' ' ')"
            return 1
        fi
        # Ours promises a "listening" line on stderr once ready: require it too.
        if socket_listening "$SOCK" && { [[ $BACKEND == qsd ]] || grep -q listening "$blog"; }; then
            record "$tag: backend start" 0 "pid $BPID"
            return 0
        fi
        sleep 0.05 # poll interval, not a guess at readiness
    done
    record "$tag: backend start" 1 "not listening after ${READY_TIMEOUT}s"
    stop_process "$BPID"
    BPID=
    return 1
}

stop_backend() {
    local tag=$1 st
    stop_process "$BPID"
    st=$STOP_STATUS
    BPID=
    record "$tag: backend exit status on SIGTERM" "$st" "status $st"
    if [[ $BACKEND == ours ]]; then
        local left=0
        [[ -e $SOCK ]] && left=1
        record "$tag: socket removed on exit" "$left" "$SOCK"
    else
        log "info: socket left behind by qsd: $([[ -e $SOCK ]] && echo yes || echo no)"
        rm -f "$SOCK"
    fi
}

# guest_start TAG ARGS...: run-guest.sh in the background (CPID), so signals
# reach our trap at once and the caller can act while the guest runs. Its
# stdout (results) goes to WORK/guest-TAG.out, the serial log to
# WORK/serial-TAG.log, its progress messages straight to stderr.
guest_start() {
    local tag=$1
    shift
    "$ROOT/scripts/guest/run-guest.sh" --socket "$SOCK" --memory "$MEMORY" \
        --timeout "$GUEST_TIMEOUT" --capacity-sectors "$CAPACITY_SECTORS" \
        ${EXPECT_SERIAL:+--serial "$EXPECT_SERIAL"} --log "$WORK/serial-$tag.log" \
        --qemu-log "$WORK/qemu-$tag.log" "$@" \
        >"$WORK/guest-$tag.out" &
    CPID=$!
}

# guest_finish TAG: waits for it, shows and records the result.
guest_finish() {
    local tag=$1 st=0 out=$WORK/guest-$1.out
    wait "$CPID" || st=$?
    CPID=
    sed "s/^/  [$tag] /" "$out" >&2
    record "$tag: guest" "$st" "$(grep '^run-guest:' "$out" | tail -n 1)"
    return "$st"
}

run_guest() { # run_guest TAG ARGS...
    guest_start "$@"
    guest_finish "$1"
}

# guest_wait_for TAG REGEX [TIMEOUT]: true once the guest's serial log has a
# line matching REGEX; false if the guest ends first (run-guest.sh enforces
# the time limit, so this wait is bounded too), or after TIMEOUT seconds.
guest_wait_for() {
    local log=$WORK/serial-$1.log deadline=$((SECONDS + ${3:-GUEST_TIMEOUT + 60}))
    while kill -0 "$CPID" 2>/dev/null && ((SECONDS < deadline)); do
        grep -aq "$2" "$log" 2>/dev/null && return 0
        sleep 0.05 # poll interval
    done
    return 1
}

# alarming_lines LOG...: backend log lines worth a failure: for ours anything
# at warning level or above (swift-log puts the level second), for qsd any
# line at all (it prints nothing while all is well).
alarming_lines() {
    case $BACKEND in
        ours) grep -ahE '^[^ ]+ (warning|error|critical) ' "$@" || true ;;
        qsd) grep -ah . "$@" || true ;;
    esac
}

# backend_serving TAG LOG...: the running backend is alive and listening, ready
# for the next front-end, and LOG (default: its own) has nothing alarming.
backend_serving() {
    local tag=$1 st=0 bad
    shift
    { [[ -n $BPID ]] && kill -0 "$BPID" 2>/dev/null && socket_listening "$SOCK"; } || st=1
    record "$tag: backend alive and listening" "$st" "pid ${BPID:-none}"
    (($#)) || set -- "$BLOG"
    bad=$(alarming_lines "$@")
    st=0
    [[ -z $bad ]] || st=1
    record "$tag: backend log clean" "$st" \
        "$(if ((st)); then echo "$(wc -l <<<"$bad") lines, first: $(head -n 1 <<<"$bad")"; else echo "$# log(s)"; fi)"
}

log "backend=$BACKEND queues=[$QUEUES_LIST] memory=$MEMORY workdir=$WORK"

# Build (or reuse) the guest kernel and initramfs up front, so a broken build
# is reported once rather than by every boot.
"$ROOT/scripts/guest/build-artifacts.sh" >/dev/null

if [[ $MEMORY == hugepages ]]; then
    HUGE_SETUP=1
    "$ROOT/qemu-configs/setup-hugepages.sh" "$HUGEPAGES"
fi

# Sparse: the backend must cope with holes (reads return zeroes).
truncate -s "${IMG_MIB}M" "$IMG"

for q in $QUEUES_LIST; do
    [[ ${E2E_BASIC:-1} == 1 ]] || break
    sha=
    if start_backend "q$q-full" "$q"; then
        if run_guest "q$q-full" --queues "$q" --mode full; then
            sha=$(sed -n 's/^persist_sha256=//p' "$WORK/guest-q$q-full.out")
        fi
        stop_backend "q$q-full"
    fi
    if [[ -z $sha ]]; then
        record "q$q-readback: skipped, no persistence hash from the full run" 1
        continue
    fi
    if start_backend "q$q-readback" "$q"; then
        run_guest "q$q-readback" --queues "$q" --mode readback --expect-sha256 "$sha" || true
        stop_backend "q$q-readback"
    fi
done

# Backend restart under a running guest: QEMU (reconnect=1) reconnects, the
# guest's I/O stalls for the gap and then completes on the new process. The
# restart happens once the guest has finished the ext4 checks, i.e. during the
# raw, discard, flush and fio steps that follow; all of them must pass.
if [[ ${E2E_RECONNECT:-1} == 1 ]]; then
    q=${QUEUES_LIST##* }
    tag=q$q-reconnect
    if start_backend "$tag" "$q"; then
        guest_start "$tag" --queues "$q" --mode full --reconnect 1
        if guest_wait_for "$tag" '^VTEST-RESULT ext4-verify'; then
            stop_backend "$tag-1st"
            if ! start_backend "$tag-2nd" "$q"; then
                # Without a backend the guest would only hit its time limit.
                kill -TERM "$CPID" 2>/dev/null || true
            fi
        else
            record "$tag: guest reached the restart point" 1
        fi
        guest_finish "$tag" || true
        if [[ -n $BPID ]]; then stop_backend "$tag-2nd"; fi
    fi
fi

# QEMU killed mid-I/O (a crashed or destroyed VM): the backend must drain what is
# in flight, drop the session and unmap the guest's memory without crashing, and
# serve the next QEMU. The guest runs fio (random writes on every queue); once fio
# has started, the QEMU process gets SIGKILL; a second guest then runs the full
# checks against the same backend process.
if [[ ${E2E_QEMU_KILL:-1} == 1 ]]; then
    q=${QUEUES_LIST##* }
    tag=q$q-qemu-killed
    if start_backend "$tag" "$q"; then
        # 60 s of fio: far longer than the kill below needs, so the kill lands mid-I/O.
        guest_start "$tag" --queues "$q" --mode bench --guest-param bench_rw=randwrite \
            --guest-param bench_runtime=60 --guest-param bench_jobs="$q"
        if guest_wait_for "$tag" '^VTEST-BENCH-START'; then
            # A moment of I/O first: a workload duration, not a readiness guess (fio is running).
            sleep 2
            pkill -KILL -f "qemu-system-x86_64 .*path=$SOCK" || true
            st=0
            wait "$CPID" || st=$?
            CPID=
            record "$tag: QEMU killed during fio" "$([[ $st != 0 ]] && echo 0 || echo 1)" "run-guest exit $st"
            st=0
            kill -0 "$BPID" 2>/dev/null || st=1
            record "$tag: backend survived" "$st"
            if ((st == 0)); then
                run_guest "$tag-next" --queues "$q" --mode full || true
            fi
        else
            record "$tag: guest reached fio" 1
            guest_finish "$tag" || true
        fi
        if [[ -n $BPID ]]; then stop_backend "$tag"; fi
    fi
fi

# Guest reboot and VM reset with writes in flight: QEMU stops the device
# (GET_VRING_BASE on every queue while requests are in flight), the guest's
# second boot in the same QEMU process sets it up again from scratch, on the
# same backend session. Two kinds: the guest reboots itself (sysrq b, no
# device shutdown) and the host resets the VM (QMP system_reset), which the
# guest never sees coming. Both guests use one backend process, so the first
# also shows that the backend serves the next front-end afterwards.
if [[ ${E2E_RESET:-1} == 1 ]]; then
    q=${QUEUES_LIST##* }
    tag=q$q-reset
    if start_backend "$tag" "$q"; then
        for by in self host; do
            t=$tag-$by
            qmp=$WORK/qmp-$t.sock
            # Tells this run's boot marker from one an earlier run left on the image.
            nonce=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
            guest_start "$t" --queues "$q" --mode reset --boots 2 --qmp "$qmp" \
                --guest-param reset_by="$by" --guest-param boot_nonce="$nonce"
            if [[ $by == host ]]; then
                # The guest announces the moment: fio's writes are in flight.
                if guest_wait_for "$t" '^VTEST-RESET-READY'; then
                    st=0
                    out=$(/usr/bin/python3 "$ROOT/scripts/guest/qmp.py" "$qmp" system_reset 2>&1) || st=$?
                    record "$t: QMP system_reset during fio" "$st" "$out"
                    # Otherwise the guest would wait for fio's 30 s first.
                    ((st == 0)) || kill -TERM "$CPID" 2>/dev/null || true
                else
                    record "$t: guest reached fio" 1
                fi
            fi
            guest_finish "$t" || true
            backend_serving "$t"
        done
        stop_backend "$tag"
    fi
fi

# Backend crash under a running guest: SIGKILL while fio writes on every
# queue, a new process on the same socket and image, QEMU (reconnect=1)
# reconnects and the guest's I/O must go on as if nothing happened. Requests
# the killed process had in flight are known only through INFLIGHT_SHMFD (the
# region QEMU keeps across reconnects): the new process must resubmit them,
# or the guest waits for them forever. One fio round per kill, so that every
# kill lands mid-write and the verify of each round covers it.
if [[ ${E2E_KILL:-1} == 1 ]]; then
    q=${QUEUES_LIST##* }
    tag=q$q-kill
    if [[ $BACKEND == qsd ]]; then
        log "skip $tag: qemu-storage-daemon 7.2 does not offer INFLIGHT_SHMFD, so requests in flight at a kill are lost"
    elif start_backend "$tag" "$q"; then
        logs=("$BLOG")
        guest_start "$tag" --queues "$q" --mode rounds --reconnect 1 --guest-param rounds="$KILL_COUNT"
        kills=0 midwrite=0
        for ((k = 1; k <= KILL_COUNT; k++)); do
            if ! guest_wait_for "$tag" "^VTEST-ROUND $k " "$KILL_ROUND_TIMEOUT"; then
                record "$tag: guest reached round $k" 1 "not within ${KILL_ROUND_TIMEOUT}s of the previous restart"
                break
            fi
            grep -aq "^VTEST-ROUND $k writing" "$WORK/serial-$tag.log" && midwrite=$((midwrite + 1))
            kill -KILL "$BPID" 2>/dev/null || true
            wait "$BPID" 2>/dev/null || true
            BPID=
            kills=$((kills + 1))
            # The killed process leaves its socket file behind; ours must replace it.
            start_backend "$tag-restart$k" "$q" keep-socket || break
            logs+=("$BLOG")
        done
        # After the last restart the guest finishes its round and the final
        # verify; a request lost for good would leave it waiting until its own
        # time limit, so stop it sooner.
        if ((kills < KILL_COUNT)) || ! guest_wait_for "$tag" '^VTEST-END' "$KILL_ROUND_TIMEOUT"; then
            kill -TERM "$CPID" 2>/dev/null || true
        fi
        st=0
        guest_finish "$tag" || st=1
        survived=0
        for ((k = 1; k <= kills; k++)); do
            grep -aq "^VTEST-RESULT fio-round-$k PASS" "$WORK/serial-$tag.log" && survived=$((survived + 1))
        done
        ((survived == KILL_COUNT && midwrite == KILL_COUNT)) || st=1
        # What the kills caught is luck: the restarted processes log how many
        # requests their in-flight log gave them to resubmit (ours; none for a
        # kill between requests, which would pass without INFLIGHT_SHMFD too).
        resumed=0 nresub=0
        for f in "${logs[@]:1}"; do
            n=$(sed -n 's/.*in-flight log: \([0-9]*\) request(s) to resubmit.*/\1/p' "$f" |
                awk '{ s += $1 } END { print s + 0 }')
            if ((n > 0)); then
                resumed=$((resumed + 1))
                nresub=$((nresub + n))
            fi
        done
        record "$tag: guest fio survived backend SIGKILLs" "$st" \
            "$survived of $KILL_COUNT kills survived, $midwrite with writes in flight; $resumed restarts resubmitted $nresub requests"
        if [[ -n $BPID ]]; then
            backend_serving "$tag" "${logs[@]}"
            stop_backend "$tag"
        fi
    fi
fi

# Hugepage-backed guest RAM: the backend maps hugetlbfs fds instead of memfd
# ones (different page size and alignment of the regions it is given).
if [[ $MEMORY == memfd && ${E2E_HUGEPAGES:-1} == 1 ]]; then
    q=${QUEUES_LIST##* } # the last (largest) queue count
    tag=q$q-hugepages
    huge_before=$(<"$NR_2M")
    if "$ROOT/qemu-configs/setup-hugepages.sh" "$HUGEPAGES"; then
        HUGE_SETUP=1
        if start_backend "$tag" "$q"; then
            run_guest "$tag" --queues "$q" --mode full --memory hugepages || true
            stop_backend "$tag"
        fi
        HUGE_SETUP=0
        st=0
        "$ROOT/qemu-configs/setup-hugepages.sh" --release || st=1
        [[ $(<"$NR_2M") == "$huge_before" ]] || st=1
        record "$tag: hugepages released" "$st" "2 MiB pages back to $(<"$NR_2M")"
    else
        record "$tag: reserve $HUGEPAGES hugepages" 1
    fi
fi

exit 0 # the verdict and summary line come from cleanup
