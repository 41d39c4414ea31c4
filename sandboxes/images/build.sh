#!/usr/bin/env bash
# Build Bosun's default agent image (sandboxes/images/agent) without network inside the build.
#
#   sandboxes/images/build.sh [--if-changed] [--online] [--tag TAG] [--base IMAGE] [--clis "CLI..."]
#
# Agent CLIs (claude codex opencode gemini aider; default: all but aider, or BOSUN_AGENT_CLIS) are
# always installed on the host by fetch_clis.sh (npm/pip), then copied into the image.
# Offline (the default): the Debian packages the image needs are downloaded on the host into a
# staged copy of the build context, then `docker build --network none` installs them.
# --online: plain `docker build` with network; the image installs its packages with apt.
# --if-changed: do nothing when TAG exists and was built from the same context and base image
# (the image carries the hash in its `bosun.context-hash` label).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

tag="${BOSUN_AGENT_IMAGE:-bosun-agent:latest}"
base="${BOSUN_BASE_IMAGE:-debian:bookworm-slim}"
default_clis="claude codex opencode gemini"
clis="${BOSUN_AGENT_CLIS-$default_clis}"
if_changed=0
online=0
while [ $# -gt 0 ]; do
    case "$1" in
    --if-changed) if_changed=1 ;;
    --online) online=1 ;;
    --tag) tag="$2"; shift ;;
    --base) base="$2"; shift ;;
    --clis) clis="$2"; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
    esac
    shift
done

src="$BOSUN_ROOT/sandboxes/images/agent"
image_exists "$base" || die "base image $base is missing (scripts/make_base_image.sh makes it)"
base_id=$(docker image inspect -f '{{.Id}}' "$base")
read -r -a cli_list <<<"$clis"
clis="${cli_list[*]}"
# The default CLI set adds nothing to the hash (tests/test_images.py recomputes it without).
extra=()
[ "$clis" = "$default_clis" ] || extra=("clis=$clis")
hash=$(tree_hash "$src" "$base_id" "online=$online" "${extra[@]}")

if [ "$if_changed" = 1 ] && image_exists "$tag" && [ "$(image_label "$tag" bosun.context-hash)" = "$hash" ]; then
    say "$tag is up to date (context $hash)"
    exit 0
fi

ctx="$BOSUN_ROOT/build/images/agent"
log="$BOSUN_ROOT/build/images/agent.log"
rm -rf "$ctx"
mkdir -p "$(dirname "$ctx")"
cp -a "$src" "$ctx"

if [ -n "$clis" ]; then
    "$BOSUN_ROOT/sandboxes/images/fetch_clis.sh" "$ctx/clis" "${cli_list[@]}"
fi

network=()
if [ "$online" = 0 ]; then
    packages=$(sed -nE 's/^ARG PACKAGES="([^"]*)"/\1/p' "$src/Dockerfile")
    [ -n "$packages" ] || die "no ARG PACKAGES line in $src/Dockerfile"
    # shellcheck disable=SC2086 # the package list is space-separated on purpose
    "$BOSUN_ROOT/sandboxes/images/fetch_debs.sh" "$ctx/bundle/debs" "$base" $packages
    network=(--network none)
fi

old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
say "docker build ${network[*]} -t $tag (log: $log)"
if ! docker build "${network[@]}" --pull=false --force-rm --build-arg "BASE_IMAGE=$base" \
    --label "bosun.context-hash=$hash" --label "bosun.image=agent" --label "bosun.agent-clis=$clis" \
    -t "$tag" "$ctx" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building $tag failed (full log: $log)"
fi
# Drop the image this build replaced (kept when a container still uses it).
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi
say "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
