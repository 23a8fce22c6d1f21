#!/usr/bin/env bash
# Installs the third-party tools the interoperability tests use, when they are missing:
#   - turnutils_uclient / turnutils_peer from Debian's `coturn` package (tests/interop.rs);
#   - the Python package `aioice` from PyPI (a TURN/ICE client no one here wrote, for the
#     ICE interoperability tests).
# Idempotent: what is already there is left alone, so running it twice does nothing the second
# time. Quiet: prints one line per thing it installs, and apt/pip output only on failure.
# Root runs apt-get directly; anyone else goes through sudo.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || sudo "$@"
    else
        log "need root for: $* (no sudo found)" >&2
        return 1
    fi
}

# Runs a command with its output kept in a temporary file, shown only if it fails.
quietly() {
    local out
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}

install_coturn() {
    if command -v turnutils_uclient >/dev/null 2>&1 && command -v turnutils_peer >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "turnutils_uclient missing and apt-get not available: install coturn by hand" >&2
        return 1
    fi
    log "installing coturn (turnutils_uclient, turnutils_peer) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing on a fresh image; update only when the package is unknown.
    if ! apt-cache show coturn >/dev/null 2>&1; then
        quietly as_root apt-get update -q
    fi
    quietly as_root apt-get install -y -q --no-install-recommends coturn
    # The package installs a turnserver service; the tests start no system daemon, and on hosts
    # with systemd the package may have started one on port 3478: stop it so that it does not
    # answer in place of uturn.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet coturn 2>/dev/null; then
        quietly as_root systemctl disable --now coturn || true
    fi
    command -v turnutils_uclient >/dev/null 2>&1
}

install_aioice() {
    local py
    py=$(command -v python3 || true)
    if [ -z "$py" ]; then
        log "python3 not found: skipping aioice" >&2
        return 0
    fi
    if "$py" -c 'import aioice' >/dev/null 2>&1; then
        return 0
    fi
    log "installing aioice with pip"
    # Debian marks its Python as externally managed (PEP 668); a user install is what we want
    # for a test dependency, so allow it there.
    if ! quietly "$py" -m pip install -q --user aioice; then
        quietly "$py" -m pip install -q --user --break-system-packages aioice
    fi
}

install_coturn
install_aioice
