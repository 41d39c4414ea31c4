#!/bin/sh
# Runs inside the agent image build, as root, with this directory at /opt/bosun/clis (its final
# place: the CLIs are not copied a second time). `sandboxes/images/fetch_clis.sh` filled it on the
# host: node_modules/ (npm CLIs and Node.js) and, when aider was selected, wheels/.
# Links each installed CLI into /usr/local/bin and checks that it starts.
set -eu
cd /opt/bosun/clis
if [ -d node_modules/.bin ]; then
    for link in node_modules/.bin/*; do
        [ -e "$link" ] || continue
        ln -sf "/opt/bosun/clis/$link" "/usr/local/bin/$(basename "$link")"
    done
fi
if [ -d wheels ]; then
    python3 -m venv /opt/bosun/aider
    /opt/bosun/aider/bin/pip install --quiet --no-index --no-cache-dir --find-links wheels \
        --disable-pip-version-check -r aider-requirements.txt
    ln -sf /opt/bosun/aider/bin/aider /usr/local/bin/aider
    rm -rf wheels
fi
# Every installed CLI must start (as root here; the sandbox runs them as uid 1000).
scratch=$(mktemp -d)
for cli in claude codex opencode gemini aider; do
    command -v "$cli" >/dev/null 2>&1 || continue
    printf '%s: ' "$cli"
    HOME="$scratch" "$cli" --version </dev/null || { echo "$cli --version failed" >&2; exit 1; }
done
rm -rf "$scratch" /root/.npm /root/.cache
