#!/usr/bin/env bash
# Make the Debian base image Bosun's images build FROM, on a host with no registry access.
#
#   scripts/make_base_image.sh [TAG]        (default TAG: debian:bookworm-slim)
#
# Tries `docker pull` first (short timeout); when that fails, builds a minimal bookworm root
# filesystem with debootstrap from this host's Debian mirror and imports it as TAG.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tag="${1:-debian:bookworm-slim}"
pull_timeout="${BOSUN_PULL_TIMEOUT:-20}"

if image_exists "$tag"; then
    say "base image $tag is present"
    exit 0
fi

if [ -z "${BOSUN_SKIP_PULL:-}" ]; then
    say "docker pull $tag (timeout ${pull_timeout}s)"
    if timeout "$pull_timeout" docker pull -q "$tag" >/dev/null 2>&1; then
        say "pulled $tag"
        exit 0
    fi
    say "pull failed; building $tag with debootstrap instead"
fi

have debootstrap || die "debootstrap is missing (apt-get install debootstrap)"
mirror=$(debian_mirror)
rootfs=$(mktemp -d /tmp/bosun-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
say "debootstrap --variant=minbase bookworm from $mirror (about a minute)"
log="$rootfs.log"
if ! as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "debootstrap failed (full log: $log)"
fi
rm -f "$log"
# Keep the image small and free of host state.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
say "docker import -> $tag"
tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$tag" >/dev/null
say "made $tag"
