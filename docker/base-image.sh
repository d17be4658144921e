#!/usr/bin/env bash
# Build the local base image for the Dockerfile when no image registry is reachable:
# a Debian minbase root made by debootstrap (with python3, venv and pip), imported
# with `docker import`. Idempotent: does nothing if the image already exists.
#
# The suite and mirror come from this machine's own apt sources
# (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list and deb822 *.sources);
# override with XPEMU_BASE_SUITE / XPEMU_BASE_MIRROR. Image name:
# $XPEMU_BASE_IMAGE_NAME (default xpemu-base:<suite>).
#
# Prints the image name (only that) on stdout, so:
#   export XPEMU_BASE_IMAGE=$(docker/base-image.sh)
#   docker-compose build      # compose.yaml passes it as BASE_IMAGE
set -euo pipefail

die() { echo "base-image.sh: $*" >&2; exit 1; }
log() { echo "base-image.sh: $*" >&2; }

# Print "suite mirror" for every enabled `deb` entry of the apt sources, one per line.
apt_entries() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # one-line format: deb [options] uri suite [component...]
        awk '$1 == "deb" {
                 i = 2
                 if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                 print $(i + 1), $i
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # deb822 format: paragraphs separated by blank lines; `#` lines are comments.
        awk 'function flush(   n, m, s, u, i, j) {
                 if (types ~ /(^| )deb( |$)/ && enabled !~ /^[Nn]o$/) {
                     n = split(suites, s, " "); m = split(uris, u, " ")
                     for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print s[i], u[j]
                 }
                 types = ""; uris = ""; suites = ""; enabled = ""; key = ""
             }
             /^#/ { next }
             /^[ \t]*$/ { flush(); next }
             /^[ \t]/ { if (key == "uris") uris = uris " " $0
                        else if (key == "suites") suites = suites " " $0
                        next }
             { key = tolower($1); sub(/:$/, "", key); v = $0; sub(/^[^:]*:[ \t]*/, "", v)
               if (key == "types") types = v
               else if (key == "uris") uris = v
               else if (key == "suites") suites = v
               else if (key == "enabled") enabled = v }
             END { flush() }' "$f"
    done
}

entries=$(apt_entries | awk 'NF == 2')
# shellcheck disable=SC1091
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")

# The release suite: the machine's own codename if an entry has it, else the first
# entry whose suite has no "-" (not -updates / -security / -backports).
SUITE=${XPEMU_BASE_SUITE:-}
if [[ -z $SUITE ]]; then
    if [[ -n $codename ]] && awk -v c="$codename" '$1 == c {f = 1} END {exit !f}' <<<"$entries"; then
        SUITE=$codename
    else
        SUITE=$(awk '$1 !~ /-/ && $1 !~ /\// {print $1; exit}' <<<"$entries")
    fi
fi
[[ -n $SUITE ]] || die "no release suite found in the apt sources; set XPEMU_BASE_SUITE"
MIRROR=${XPEMU_BASE_MIRROR:-$(awk -v s="$SUITE" '$1 == s {print $2; exit}' <<<"$entries")}
[[ -n $MIRROR ]] || die "no mirror for suite $SUITE in the apt sources; set XPEMU_BASE_MIRROR"

IMAGE=${XPEMU_BASE_IMAGE_NAME:-xpemu-base:$SUITE}

command -v docker >/dev/null || die "no docker client (run docker/engine.sh)"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers (run docker/engine.sh)"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap not installed (run docker/engine.sh)"
[[ $(id -u) == 0 ]] || die "debootstrap needs root"

# Serialise concurrent builds of the same image.
exec 9>"/tmp/xpemu-base-image.lock"
flock -w 900 9 || die "timed out waiting for another base-image build"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

ROOT=$(mktemp -d /var/tmp/xpemu-base.XXXXXX)
cleanup() {
    local m
    # debootstrap mounts proc/sys inside the target; an interrupted run can leave them.
    awk -v r="$ROOT" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT

keyring=()
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] \
    && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)

log "debootstrap $SUITE from $MIRROR into $ROOT"
t0=$SECONDS
timeout 900 debootstrap --variant=minbase "${keyring[@]}" \
    --include=python3,python3-venv,python3-pip \
    "$SUITE" "$ROOT" "$MIRROR" >/tmp/xpemu-debootstrap.log 2>&1 \
    || die "debootstrap failed (see /tmp/xpemu-debootstrap.log)"
log "debootstrap took $((SECONDS - t0))s"

# Slim the tree: package caches and lists are not needed at run time.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log

t0=$SECONDS
tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null \
    || die "docker import failed"
log "docker import took $((SECONDS - t0))s"
echo "$IMAGE"
