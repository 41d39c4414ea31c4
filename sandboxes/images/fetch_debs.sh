#!/usr/bin/env bash
# Download, on the host, the Debian bookworm packages an image needs, with every dependency the
# base image lacks, so that `docker build --network none` can install them offline.
#
#   sandboxes/images/fetch_debs.sh OUT_DIR BASE_IMAGE PACKAGE...
#
# Dependencies are resolved against BASE_IMAGE's own dpkg database, using a private apt root
# (sources: this host's Debian mirror, bookworm + updates + security), so the host's release and
# its other apt sources do not matter. Needs apt-get and the Debian archive keyring.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

[ $# -ge 3 ] || die "usage: $0 OUT_DIR BASE_IMAGE PACKAGE..."
out="$1"
base="$2"
shift 2

have apt-get || die "apt-get is needed to fetch packages on the host (or build with network)"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "missing $keyring (apt-get install debian-archive-keyring)"

root="${BOSUN_APT_ROOT:-$BOSUN_ROOT/.cache/apt-bookworm}"
mkdir -p "$root/etc/preferences.d" "$root/lists/partial" "$root/cache"
mirror=$(debian_mirror)
security=$(debian_security_mirror)
cat >"$root/etc/sources.list" <<EOF
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-updates main
deb [signed-by=$keyring] $security bookworm-security main
EOF
: >"$root/etc/preferences"

apt_opts=(
    -o "Dir::Etc::sourcelist=$root/etc/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::Etc::preferences=$root/etc/preferences"
    -o "Dir::Etc::preferencesparts=$root/etc/preferences.d"
    -o "Dir::State::lists=$root/lists"
    -o "Dir::State::status=$root/status"
    -o "Dir::Cache=$root/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
    -o "APT::Architecture=$(dpkg --print-architecture)"
    -o "APT::Architectures::=$(dpkg --print-architecture)"
)

# The base image's installed packages: dependencies it already has are not fetched again.
docker run --rm --network none --entrypoint cat "$base" /var/lib/dpkg/status >"$root/status.new"
mv "$root/status.new" "$root/status"

# Refresh the package lists at most every 6 hours (or when asked to).
stamp="$root/lists/.updated"
if [ -n "${BOSUN_APT_REFRESH:-}" ] || [ -z "$(find "$stamp" -mmin -360 2>/dev/null)" ]; then
    say "apt-get update (private bookworm lists from $mirror)"
    apt-get "${apt_opts[@]}" -qq update
    touch "$stamp"
fi

rm -rf "$out"
mkdir -p "$out/partial"
say "downloading $* and their dependencies into $out"
if ! apt-get "${apt_opts[@]}" -o "Dir::Cache::archives=$out" -qq -y \
    --no-install-recommends --download-only install "$@" >/dev/null; then
    # Stale lists point at files the mirror has dropped: refresh once and retry.
    apt-get "${apt_opts[@]}" -qq update
    touch "$stamp"
    apt-get "${apt_opts[@]}" -o "Dir::Cache::archives=$out" -qq -y \
        --no-install-recommends --download-only install "$@" >/dev/null
fi
rm -rf "$out/partial" "$out/lock"
say "$(find "$out" -name '*.deb' | wc -l) packages, $(du -sh "$out" | cut -f1)"
