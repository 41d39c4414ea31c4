#!/usr/bin/env bash
# Install and start everything Bosun needs on a Debian/Ubuntu machine, then sync its Python env.
#
#   scripts/bootstrap.sh [run|test]
#
#   run   Docker, git, the base and agent images, the Python env, the Redis password
#         (`bosun up` brings its own Redis, requiring it, when none answers).
#   test  everything `run` needs plus Redis with that password, PostgreSQL 15 (role/password
#         bosun, database bosun_test), Chromium, Docker Compose (the deployment test), and the
#         dev extras (pytest, ruff, mypy).
#
# Idempotent: each step checks before it acts, so a second run takes seconds.
# BOSUN_BOOTSTRAP_CHECK=1 only checks: it lists what it would do and exits 3 if anything is
# missing (0 when all is in place), changing nothing. Step timings go to stderr.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

profile="${1:-run}"
case "$profile" in
run | test) ;;
-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
*) die "usage: $0 [run|test]" ;;
esac

CHECK_ONLY="${BOSUN_BOOTSTRAP_CHECK:-}"
MISSING=()
LOG_DIR=/var/log
[ -w "$LOG_DIR" ] || LOG_DIR="$BOSUN_ROOT/var/log"
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
# uv trusts the system's CA store too (TLS-inspecting proxies install their CA there).
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"

# todo WHAT: in check mode, record WHAT and return false (so the caller skips the action).
todo() {
    if [ -n "$CHECK_ONLY" ]; then
        MISSING+=("$1")
        say "missing: $1"
        return 1
    fi
    say "$1"
}

systemd_running() { [ -d /run/systemd/system ]; }

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds, or fail naming WHAT.
wait_for() {
    local limit="$1" what="$2" i
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    warn "$what did not answer within $limit s"
    return 1
}

check_platform() {
    if have apt-get && have dpkg-query; then
        return 0
    fi
    cat >&2 <<'EOF'
error: scripts/bootstrap.sh installs packages with apt (Debian 12 "bookworm" or Ubuntu).
On this system, install these yourself, then run `make run` / `make test` again:
  - Docker Engine (running; user-namespace remapping recommended)
  - git, curl, CA certificates
  - Python >= 3.11 and uv (https://docs.astral.sh/uv/)
  - Redis >= 6 listening on 127.0.0.1:6379              (tests; `bosun up` can spawn one)
    requiring the password kept in /etc/bosun/redis-password (requirepass; root-only file)
  - PostgreSQL 15 with role bosun/bosun and database bosun_test on 127.0.0.1:5432 (tests)
  - Chromium or Chrome                                   (tests)
  - the base image: docker pull debian:bookworm-slim
Then build the agent image with: sandboxes/images/build.sh --online
EOF
    exit 2
}

# pkg_wanted PKG: true when PKG (or what it provides) is not on this machine yet.
pkg_wanted() {
    case "$1" in
    docker.io) docker info >/dev/null 2>&1 || have dockerd && return 1 ;;
    docker-compose) { have docker-compose || docker compose version; } >/dev/null 2>&1 && return 1 ;;
    redis-server) have redis-server && return 1 ;;
    postgresql) have pg_ctlcluster && return 1 ;;
    chromium) { have chromium || have chromium-browser || have google-chrome; } && return 1 ;;
    nodejs) have node && return 1 ;;
    npm) have npm && return 1 ;;
    python3-pip) { have uv || python3 -m pip --version; } >/dev/null 2>&1 && return 1 ;;
    esac
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" != "install ok installed" ]
}

ensure_packages() {
    local pkgs=(ca-certificates curl git make debootstrap debian-archive-keyring docker.io python3 python3-pip)
    if [ "$profile" = test ]; then
        # nodejs/npm and wrk: the intake benchmark's Probot baseline and load generator.
        pkgs+=(redis-server postgresql chromium fonts-liberation shellcheck nodejs npm wrk docker-compose)
    fi
    local want=() p
    for p in "${pkgs[@]}"; do
        if pkg_wanted "$p"; then want+=("$p"); fi
    done
    if [ ${#want[@]} -eq 0 ]; then
        say "system packages are installed"
        return 0
    fi
    todo "apt-get install ${want[*]}" || return 0
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}

ensure_docker() {
    if docker info >/dev/null 2>&1; then
        say "Docker engine answers"
        return 0
    fi
    if systemd_running; then
        todo "starting the docker service" || return 0
        as_root systemctl start docker
    else
        # No init system (a container or a bare VM image): run dockerd ourselves, without a
        # bridge or iptables (containers get network none) and with user-namespace remapping.
        local log="$LOG_DIR/bosun-dockerd.log"
        todo "starting dockerd (log: $log)" || return 0
        mkdir -p "$LOG_DIR"
        if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ -z "$(ls -A /sys/fs/cgroup 2>/dev/null)" ]; then
            say "mounting cgroups (no init system did)"
            have cgroupfs-mount || as_root apt-get install -y -qq --no-install-recommends cgroupfs-mount >/dev/null
            as_root cgroupfs-mount
        fi
        as_root nohup dockerd --bridge=none --iptables=false --ip-masq=false \
            --userns-remap=default >>"$log" 2>&1 </dev/null &
    fi
    if ! wait_for 60 "docker" docker info; then
        tail -n 20 "${log:-/dev/null}" >&2 || true
        die "the Docker engine did not answer within 60 s"
    fi
    say "Docker engine is up"
}

# The password Redis requires: generated once, kept root-only, read by Bosun and the tests
# (BOSUN_REDIS__PASSWORD_FILE, BOSUN_TEST_REDIS_PASSWORD_FILE; see the Makefile).
REDIS_PASSWORD_FILE="${BOSUN_REDIS__PASSWORD_FILE:-/etc/bosun/redis-password}"
# Debian's redis-server service reads this through an `include` line in its redis.conf.
REDIS_SERVICE_CONF=/etc/redis/bosun.conf

redis_password() { as_root cat "$REDIS_PASSWORD_FILE" 2>/dev/null; }

ensure_redis_password() {
    if as_root test -s "$REDIS_PASSWORD_FILE"; then
        say "Redis password is in $REDIS_PASSWORD_FILE"
        return 0
    fi
    todo "creating the Redis password in $REDIS_PASSWORD_FILE (root-only)" || return 0
    local password
    password=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    as_root install -d -m 0755 "$(dirname "$REDIS_PASSWORD_FILE")"
    printf '%s\n' "$password" | as_root install -m 0600 -o root -g root /dev/stdin "$REDIS_PASSWORD_FILE"
}

# redis_say [PASSWORD] < COMMANDS: the replies of Redis on 127.0.0.1:6379 to COMMANDS (one per
# line), after AUTH when PASSWORD is given. Passwords travel on stdin, never on a command line.
redis_say() {
    local commands
    commands=$(cat)
    if [ -n "${1:-}" ]; then commands=$(printf 'AUTH %s\n%s' "$1" "$commands"); fi
    if have redis-cli; then
        printf '%s\n' "$commands" | redis-cli -h 127.0.0.1 -p 6379 2>/dev/null
    else
        # No redis-cli: RESP inline commands over bash's /dev/tcp, one reply line each.
        (
            exec 3<>/dev/tcp/127.0.0.1/6379 || exit 1
            n=$(printf '%s\n' "$commands" | grep -c .)
            printf '%s\n' "$commands" >&3
            for ((; n > 0; n--)); do
                IFS= read -r -t 2 line <&3 || break
                line=${line%$'\r'}
                printf '%s\n' "${line#[-+:]}"
            done
        ) 2>/dev/null
    fi
}

redis_listening() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
# Takes Bosun's password (AUTH succeeds only when a password is set) and answers.
redis_answers() {
    local password
    password=$(redis_password)
    [ -n "$password" ] && [ "$(echo PING | redis_say "$password" | tr '\n' ' ')" = "OK PONG " ]
}
# Runs commands for anyone: no password set.
redis_open() { [ "$(echo PING | redis_say | tail -n1)" = PONG ]; }

# With systemd, Debian's redis-server reads its configuration from /etc/redis/redis.conf
# (owner redis): put the password in a file of its own that redis.conf includes.
ensure_redis_service_conf() {
    local conf=/etc/redis/redis.conf
    [ -f "$conf" ] || return 0
    if as_root grep -qx "include $REDIS_SERVICE_CONF" "$conf" &&
        [ "$(as_root cat "$REDIS_SERVICE_CONF" 2>/dev/null)" = "requirepass $(redis_password)" ]; then
        return 0
    fi
    todo "configuring redis-server to require the password ($REDIS_SERVICE_CONF)" || return 0
    printf 'requirepass %s\n' "$(redis_password)" |
        as_root install -m 0640 -o root -g "$(stat -c %G "$conf")" /dev/stdin "$REDIS_SERVICE_CONF"
    as_root grep -qx "include $REDIS_SERVICE_CONF" "$conf" ||
        echo "include $REDIS_SERVICE_CONF" | as_root tee -a "$conf" >/dev/null
}

ensure_redis() {
    if systemd_running; then ensure_redis_service_conf; fi
    if redis_answers; then
        say "Redis answers on 127.0.0.1:6379 and requires the password"
        return 0
    fi
    if redis_open; then
        # A Redis without a password (for example one an earlier bootstrap started): require
        # it now, without a restart; the configuration above makes it stick.
        todo "requiring the password on the Redis at 127.0.0.1:6379" || return 0
        printf 'CONFIG SET requirepass %s\n' "$(redis_password)" | redis_say >/dev/null
    elif redis_listening; then
        if [ -n "$CHECK_ONLY" ]; then todo "a Redis on 127.0.0.1:6379 that takes the password" || return 0; fi
        die "the Redis on 127.0.0.1:6379 refuses the password in $REDIS_PASSWORD_FILE: put its password there, or stop it so the bootstrap starts one"
    else
        todo "starting redis-server on 127.0.0.1:6379" || return 0
        if systemd_running; then
            as_root systemctl start redis-server
        else
            local dir=/var/lib/redis
            [ -d "$dir" ] || dir="$BOSUN_ROOT/var/redis"
            mkdir -p "$dir"
            # The configuration comes on stdin (`-`), so the password is on no command line.
            printf '%s\n' "bind 127.0.0.1" "port 6379" "daemonize yes" "dir \"$dir\"" \
                "logfile \"$LOG_DIR/bosun-redis.log\"" "requirepass $(redis_password)" |
                as_root redis-server -
        fi
    fi
    wait_for 20 redis redis_answers || die "redis-server did not answer to its password within 20 s"
}

pg_cluster() { pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1, $2}'; }

psql_admin() { as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -tA "$@"; }

ensure_postgres() {
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        local cluster
        cluster=$(pg_cluster)
        [ -n "$cluster" ] || cluster="15 main"
        todo "starting PostgreSQL cluster $cluster" || return 0
        # shellcheck disable=SC2086 # "VERSION NAME" splits into two arguments
        as_root pg_ctlcluster $cluster start
        wait_for 30 postgres pg_isready -q -h 127.0.0.1 -p 5432 ||
            die "PostgreSQL did not accept connections within 30 s"
    fi
    if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'bosun'")" != 1 ]; then
        todo "creating PostgreSQL role bosun" || return 0
        psql_admin -c "CREATE ROLE bosun LOGIN CREATEDB PASSWORD 'bosun'"
    fi
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'bosun_test'")" != 1 ]; then
        todo "creating PostgreSQL database bosun_test" || return 0
        psql_admin -c "CREATE DATABASE bosun_test OWNER bosun"
    fi
    say "PostgreSQL: bosun@127.0.0.1:5432/bosun_test is ready"
}

ensure_base_image() {
    local base="${BOSUN_BASE_IMAGE:-debian:bookworm-slim}"
    if image_exists "$base"; then
        say "base image $base is present"
        return 0
    fi
    todo "making base image $base" || return 0
    "$BOSUN_ROOT/scripts/make_base_image.sh" "$base"
}

ensure_agent_image() {
    if [ -n "$CHECK_ONLY" ]; then
        # Same test build.sh --if-changed makes, without building.
        local tag="${BOSUN_AGENT_IMAGE:-bosun-agent:latest}"
        local base="${BOSUN_BASE_IMAGE:-debian:bookworm-slim}" hash
        if image_exists "$tag" && image_exists "$base"; then
            hash=$(tree_hash "$BOSUN_ROOT/sandboxes/images/agent" \
                "$(docker image inspect -f '{{.Id}}' "$base")" "online=0")
            if [ "$(image_label "$tag" bosun.context-hash)" = "$hash" ]; then
                say "$tag is up to date"
                return 0
            fi
        fi
        todo "building the agent image $tag" || true
        return 0
    fi
    "$BOSUN_ROOT/sandboxes/images/build.sh" --if-changed
}

# service_source_hash: what the service image is built from (tracked files and uncommitted
# changes of the package, its lock and the Dockerfile, and the base image).
service_source_hash() {
    local paths=(bot jobs sandboxes pyproject.toml uv.lock Dockerfile app-manifest.yml)
    {
        git -C "$BOSUN_ROOT" ls-files -s -- "${paths[@]}"
        git -C "$BOSUN_ROOT" diff HEAD -- "${paths[@]}"
        docker image inspect -f '{{.Id}}' "${BOSUN_BASE_IMAGE:-debian:bookworm-slim}" 2>/dev/null
    } | sha256sum | cut -c1-16
}

ensure_service_image() {
    # Under CI the deployment tests run the service image's roles and compose.yaml against it:
    # built from this tree (about a minute) unless the image already holds exactly this source.
    [ "${CI:-}" = true ] || return 0
    local tag=bosun:test stamp="$BOSUN_ROOT/build/service-image.stamp" want
    want="$(service_source_hash) $(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null)"
    if image_exists "$tag" && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "$tag is up to date"
        return 0
    fi
    if [ -n "$CHECK_ONLY" ]; then
        todo "building the service image $tag" || true
        return 0
    fi
    "$BOSUN_ROOT/scripts/build_service_image.sh" --tag "$tag"
    mkdir -p "$BOSUN_ROOT/build"
    echo "$(service_source_hash) $(docker image inspect -f '{{.Id}}' "$tag")" >"$stamp"
}

find_uv() {
    have uv && return 0
    local dir
    for dir in "$HOME/.local/bin" /usr/local/bin; do
        if [ -x "$dir/uv" ]; then
            PATH="$dir:$PATH"
            return 0
        fi
    done
    return 1
}

ensure_python() {
    if ! find_uv; then
        todo "pip install uv" || return 0
        local extra=()
        if compgen -G "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" >/dev/null; then
            extra=(--break-system-packages)
        fi
        as_root env PIP_NO_CACHE_DIR=1 python3 -m pip install -q --root-user-action=ignore "${extra[@]}" uv
        hash -r
        find_uv || die "uv was installed but is not on PATH"
    fi
    # The `otel` extra in both profiles: traces are one environment variable away, and the
    # tests export them to a receiver of their own.
    local args=(sync --frozen --extra otel)
    # The run profile adds what `bosun` needs but keeps dev tools a test run installed.
    if [ "$profile" = test ]; then args+=(--extra dev); else args+=(--inexact); fi
    if [ -n "$CHECK_ONLY" ]; then
        if ! (cd "$BOSUN_ROOT" && uv "${args[@]}" --check >/dev/null 2>&1); then
            todo "uv ${args[*]}" || true
        else
            say "Python environment .venv is in sync"
        fi
        return 0
    fi
    say "uv ${args[*]} (.venv)"
    (cd "$BOSUN_ROOT" && UV_PROJECT_ENVIRONMENT="$BOSUN_ROOT/.venv" uv "${args[@]}" --quiet)
}

# The dashboard's browser libraries (htmx, its SSE extension, SortableJS; axe-core for the
# tests): pinned npm tarballs, sha512-verified (scripts/fetch_assets.py), into gitignored folders.
ensure_assets() {
    local args=()
    if [ "$profile" = test ]; then args+=(--test); fi
    if [ -n "$CHECK_ONLY" ]; then
        python3 "$BOSUN_ROOT/scripts/fetch_assets.py" "${args[@]}" --check >/dev/null 2>&1 ||
            todo "fetching the dashboard assets (scripts/fetch_assets.py)" || true
        return 0
    fi
    python3 "$BOSUN_ROOT/scripts/fetch_assets.py" "${args[@]}"
}

# The intake benchmark's baseline (bench/probot: Probot 14, pinned by its package-lock.json),
# whose smoke round the test suite runs.
ensure_bench_probot() {
    local dir="$BOSUN_ROOT/bench/probot"
    if [ -d "$dir/node_modules/probot" ]; then
        say "Probot baseline is installed in bench/probot"
        return 0
    fi
    todo "npm ci in bench/probot (the intake benchmark's Probot baseline)" || return 0
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

main() {
    local start=${EPOCHREALTIME/./}
    say "bootstrap ($profile profile) in $BOSUN_ROOT"
    check_platform
    step packages ensure_packages
    step docker ensure_docker
    step redis-password ensure_redis_password
    if [ "$profile" = test ]; then
        step redis ensure_redis
        step postgres ensure_postgres
    fi
    if [ -z "$CHECK_ONLY" ] || docker info >/dev/null 2>&1; then
        step base-image ensure_base_image
        step agent-image ensure_agent_image
    fi
    step python ensure_python
    step assets ensure_assets
    if [ "$profile" = test ]; then
        step bench-probot ensure_bench_probot
        step service-image ensure_service_image
    fi
    local elapsed=$((${EPOCHREALTIME/./} - start))
    printf 'timing: %-18s %4d.%01ds\n' total $((elapsed / 1000000)) $((elapsed % 1000000 / 100000)) >&2
    if [ ${#MISSING[@]} -gt 0 ]; then
        say "${#MISSING[@]} thing(s) to do: run scripts/bootstrap.sh $profile"
        exit 3
    fi
    say "ready"
}

main
