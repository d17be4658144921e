#!/usr/bin/env bash
# Make a Docker engine available on this machine, idempotently.
#
#  - installs docker.io, docker-compose and debootstrap with apt-get when missing
#    (runs `apt-get update` first only when a package has no install candidate);
#  - if no engine answers `docker info`, starts
#    `dockerd --bridge=none --iptables=false` in the background (the stack uses
#    `network_mode: none`, so no bridge or NAT is needed), logging to $XPEMU_DOCKERD_LOG
#    and recording its pid in $XPEMU_DOCKERD_PIDFILE;
#  - waits at most $XPEMU_DOCKERD_WAIT seconds for the engine to answer.
#
# Exit 0 when the engine is ready; otherwise non-zero with one line on stderr.
# Stop the engine started here with: kill "$(cat "$XPEMU_DOCKERD_PIDFILE")"
set -euo pipefail

LOG=${XPEMU_DOCKERD_LOG:-/tmp/xpemu-dockerd.log}
PIDFILE=${XPEMU_DOCKERD_PIDFILE:-/tmp/xpemu-dockerd.pid}
WAIT=${XPEMU_DOCKERD_WAIT:-60}
PACKAGES=(docker.io docker-compose debootstrap)

die() { echo "engine.sh: $*" >&2; exit 1; }

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

# --- packages ---------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get"
    [[ $(id -u) == 0 ]] || die "packages missing (${missing[*]}); run as root to install"
    need_update=0
    for pkg in "${missing[@]}"; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [[ -n $cand && $cand != "(none)" ]] || need_update=1
    done
    if ((need_update)); then
        timeout 300 apt-get update -q >/tmp/xpemu-apt.log 2>&1 \
            || die "apt-get update failed (see /tmp/xpemu-apt.log)"
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >>/tmp/xpemu-apt.log 2>&1 \
        || die "apt-get install ${missing[*]} failed (see /tmp/xpemu-apt.log)"
fi
command -v docker >/dev/null || die "no docker client on PATH after install"

# --- engine -----------------------------------------------------------------
if engine_up; then
    exit 0
fi

# A dockerd we started earlier may still be coming up: do not start a second one.
if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    :
else
    command -v dockerd >/dev/null || die "dockerd not found"
    [[ $(id -u) == 0 ]] || die "no engine answers and starting dockerd needs root"
    # setsid: own session, so the engine outlives the shell that started it.
    setsid dockerd --bridge=none --iptables=false </dev/null >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
fi

pid=$(cat "$PIDFILE")
for ((i = 0; i < WAIT; i++)); do
    engine_up && exit 0
    kill -0 "$pid" 2>/dev/null \
        || die "dockerd (pid $pid) exited; last log line: $(tail -n 1 "$LOG" 2>/dev/null)"
    sleep 1
done
die "dockerd (pid $pid) did not answer within ${WAIT}s (log: $LOG)"
