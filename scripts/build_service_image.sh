#!/usr/bin/env bash
# Build the Bosun service image (the repository's Dockerfile) with no network inside the build.
#
#   scripts/build_service_image.sh [--online] [--tag TAG] [--base IMAGE]
#
# Offline (the default): on the host, fetch the Debian packages (resolved against the base
# image), export the locked requirements from uv.lock, download/build their wheels and Bosun's
# own wheel into a staged context, then `docker build --network none`.
# --online: plain `docker build` of the repository root (apt and PyPI inside the build).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tag="${BOSUN_SERVICE_IMAGE:-bosun:latest}"
base="${BOSUN_BASE_IMAGE:-debian:bookworm-slim}"
online=0
while [ $# -gt 0 ]; do
    case "$1" in
    --online) online=1 ;;
    --tag) tag="$2"; shift ;;
    --base) base="$2"; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
    esac
    shift
done

cd "$BOSUN_ROOT"
log="$BOSUN_ROOT/build/service.log"
mkdir -p build
if [ "$online" = 1 ]; then
    say "docker build -t $tag . (online; log: $log)"
    docker build --force-rm --build-arg "BASE_IMAGE=$base" -t "$tag" . >"$log" 2>&1 ||
        { tail -n 30 "$log" >&2; die "building $tag failed (full log: $log)"; }
    docker image prune -f --filter label=bosun.image=service-build >/dev/null
    say "built $tag"
    exit 0
fi

have uv || die "uv is missing (scripts/bootstrap.sh installs it)"
image_exists "$base" || die "base image $base is missing (scripts/make_base_image.sh makes it)"
ctx="$BOSUN_ROOT/build/service/context"
bundle="$ctx/.bundle"
rm -rf "$ctx"
mkdir -p "$bundle/wheels"

packages=$(sed -nE 's/^ARG PACKAGES="([^"]*)"/\1/p' Dockerfile)
[ -n "$packages" ] || die "no ARG PACKAGES line in Dockerfile"
# shellcheck disable=SC2086 # the package list is space-separated on purpose
step debs sandboxes/images/fetch_debs.sh "$bundle/debs" "$base" $packages

# The image's own CPython version: environment markers (python_full_version < "3.11.3", ...)
# must be evaluated for it, not for the host's Python.
pydeb=$(find "$bundle/debs" -regextype posix-extended -regex '.*/python3\.[0-9]+_[^/]+\.deb' | head -n1)
if [ -n "$pydeb" ]; then
    pyversion=$(dpkg-deb -f "$pydeb" Version | sed -E 's/-.*//')
else
    pyversion=$(docker run --rm --network none --entrypoint python3 "$base" -c \
        'import platform; print(platform.python_version())')
fi
say "resolving the locked requirements for the image's Python $pyversion"
# The `otel` extra too: traces are one environment variable away (docs/operations.md#tracing).
uv export --frozen --no-hashes --no-emit-project --no-dev --extra otel --quiet -o "$bundle/locked.txt"
uv pip compile --quiet --no-header --no-annotate --python-version "$pyversion" \
    --python-platform "$(uname -m)-manylinux_2_36" "$bundle/locked.txt" -o "$bundle/requirements.txt"
step bosun-wheel uv build --wheel --quiet --out-dir "$bundle/wheels"
# A CPython 3.11 with pip downloads the wheels (and turns sdists into wheels) for the image.
py="$BOSUN_ROOT/build/service/py311"
if [ ! -x "$py/bin/pip" ]; then
    uv venv --quiet --python 3.11 "$py"
    uv pip install --quiet --python "$py/bin/python" pip
fi
PIP_CONFIG_FILE=/dev/null step wheels "$py/bin/pip" wheel --quiet --no-deps \
    -r "$bundle/requirements.txt" -w "$bundle/wheels"
say "$(find "$bundle/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$bundle/wheels" | cut -f1)"

old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
say "docker build --network none -t $tag (log: $log)"
if ! step docker-build docker build --network none --pull=false --force-rm --build-arg "BASE_IMAGE=$base" \
    -f Dockerfile -t "$tag" "$ctx" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building $tag failed (full log: $log)"
fi
# The build stage is left behind as a dangling image; drop it (and any older ones).
docker image prune -f --filter label=bosun.image=service-build >/dev/null
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true # kept while a container uses it
fi
say "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
