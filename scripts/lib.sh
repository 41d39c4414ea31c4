# Shared shell helpers for Bosun's setup scripts. Source it; do not run it.
# shellcheck shell=bash

BOSUN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BOSUN_ROOT

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# step NAME CMD...: run one setup step, report its wall time on stderr and return its status.
# Under `set -e` a failing step stops the script. Call functions through it only outside `if`/`||`
# (bash ignores `set -e` inside a function called from a condition).
step() {
    local name="$1" start elapsed rc
    shift
    start=${EPOCHREALTIME/./}
    "$@"
    rc=$?
    elapsed=$((${EPOCHREALTIME/./} - start))
    printf 'timing: %-18s %4d.%01ds\n' "$name" $((elapsed / 1000000)) $((elapsed % 1000000 / 100000)) >&2
    return "$rc"
}

# as_root CMD...: run CMD as root (directly, or through sudo when available).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# The apt source URIs configured on this host, one per line (deb822 and one-line formats).
_apt_uris() {
    {
        grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
            sed -E 's/^[[:space:]]*URIs:[[:space:]]*//' | tr ' ' '\n'
        grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -E 's/\[[^]]*\]//' | awk '{print $2}'
    } | sed -E 's#/+$##' | grep -E '^https?://' || true
}

# debian_mirror: the Debian archive this host uses (falls back to deb.debian.org).
debian_mirror() {
    local uri
    uri=$(_apt_uris | grep -E '/debian$' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# debian_security_mirror: the Debian security archive this host uses.
debian_security_mirror() {
    local uri
    uri=$(_apt_uris | grep -E '/debian-security$' | head -n1)
    echo "${uri:-http://deb.debian.org/debian-security}"
}

# image_exists REF: true when the local Docker engine holds image REF.
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# image_label REF KEY: the value of label KEY on local image REF (empty when unset).
image_label() {
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/<no value>//'
}

# tree_hash DIR [EXTRA...]: a stable hash of the files under DIR (relative names and contents)
# plus any EXTRA strings (for example the id of the base image).
tree_hash() {
    local dir="$1"
    shift
    {
        (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-16
}
