# Bosun, the service: one image, one role per container (compose.yaml, docs/operations.md):
#   bosun web      webhooks, API, dashboard, /healthz, /readyz, /metrics (the default command)
#   bosun worker   deliveries, runs, upkeep (needs a Docker engine; health: bosun worker --check)
#   bosun migrate  creates or upgrades the schema, then exits
#   bosun up       all of it in one container (single host)
#
# Two ways to build it, same file:
# - offline, as scripts/build_service_image.sh does (`docker build --network none`): the host
#   first puts the Debian packages (.bundle/debs), the locked Python wheels and Bosun's own wheel
#   (.bundle/wheels, .bundle/requirements.txt) into a staged build context;
# - online, on any machine with network:  docker build -t bosun .
#   (no .bundle in the context: packages come from apt, Python packages from PyPI via uv.lock).
ARG BASE_IMAGE=debian:bookworm-slim
# Debian packages the service needs at run time (git for repository mirrors, redis-server for
# the single-container `bosun up`, tini as PID 1). build_service_image.sh reads this line.
ARG PACKAGES="ca-certificates git python3 python3-venv redis-server tini"

FROM ${BASE_IMAGE} AS build
ARG PACKAGES
# Lets build_service_image.sh remove this throw-away stage after a build.
LABEL bosun.image=service-build
COPY . /tmp/ctx
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    if ls /tmp/ctx/.bundle/debs/*.deb >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-unsafe-io /tmp/ctx/.bundle/debs/*.deb; \
    else \
        mkdir -p /tmp/ctx/.bundle/debs; \
        apt-get update && apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-unsafe-io ${PACKAGES}; \
    fi
RUN set -eu; \
    if [ -d /tmp/ctx/.bundle/wheels ]; then \
        python3 -m venv /opt/bosun; \
        /opt/bosun/bin/pip install --no-cache-dir --no-index --find-links /tmp/ctx/.bundle/wheels \
            -r /tmp/ctx/.bundle/requirements.txt; \
        /opt/bosun/bin/pip install --no-cache-dir --no-index --no-deps /tmp/ctx/.bundle/wheels/bosun-*.whl; \
    else \
        python3 -m venv /tmp/uv && /tmp/uv/bin/pip install --no-cache-dir uv; \
        cd /tmp/ctx && UV_PROJECT_ENVIRONMENT=/opt/bosun /tmp/uv/bin/uv sync --frozen --no-editable --extra otel \
            --no-cache --python /usr/bin/python3; \
    fi; \
    /opt/bosun/bin/python -m compileall -q /opt/bosun/lib; \
    /opt/bosun/bin/bosun --help >/dev/null

FROM ${BASE_IMAGE}
ARG PACKAGES
LABEL bosun.image=service
COPY --from=build /tmp/ctx/.bundle/debs /tmp/debs
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    if ls /tmp/debs/*.deb >/dev/null 2>&1; then \
        apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-unsafe-io /tmp/debs/*.deb; \
    else \
        apt-get update && apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-unsafe-io ${PACKAGES}; \
    fi; \
    apt-get clean; \
    rm -rf /tmp/debs /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    groupadd --system --gid 10001 bosun; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/bosun --create-home \
        --shell /usr/sbin/nologin bosun
COPY --from=build /opt/bosun /opt/bosun

ENV PATH=/opt/bosun/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# State (the SQLite database, artifacts, workspaces) lives under /var/lib/bosun/var by default.
WORKDIR /var/lib/bosun
USER bosun
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/bosun/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bosun", "web", "--host", "0.0.0.0", "--port", "8000"]
