#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: a virtual environment in .venv with the
# package installed (editable, so a change in the sources needs no reinstall), plus the Debian packages the
# tests run for real. Sourced, not run.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGE_AGENT_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

_as_root() { [ "$(id -u)" -eq 0 ]; }

_apt_install() {
    # apt-get only when something is missing: a machine that has everything needs no network
    if ! _as_root; then
        echo "error: missing Debian package(s): $*" >&2
        echo "       install them as root:  sudo apt-get install -y $*" >&2
        exit 1
    fi
    echo "installing Debian package(s): $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_python() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        _apt_install python3 python3-venv
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: $("$PYTHON" --version 2>&1) is too old; Python 3.11 or newer is needed (set PYTHON=...)" >&2
        exit 1
    fi
    # Debian splits venv/ensurepip out of python3
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        _apt_install python3-venv
    fi
}

ensure_venv() {
    local extras="$1"
    ensure_python
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$extras"
    # reinstall when pyproject.toml changed since the last install
    if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
        # about a minute the first time, quiet: say what is going on
        echo "installing edge-agent and its dependencies into $VENV (first run, or pyproject.toml changed) ..." >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e "$REPO[$extras]"
        echo "installed." >&2
        touch "$stamp"
    fi
}

ensure_test_services() {
    local missing=()
    [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # the web page's browser tests (Playwright drives Debian's chromium; it cannot download its own here)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        _apt_install "${missing[@]}"
    fi
    # the Debian packages start their own daemons on default ports; the tests start their own on free ports
    if _as_root && command -v service >/dev/null 2>&1; then
        service mosquitto stop >/dev/null 2>&1 || true
        service victoria-metrics stop >/dev/null 2>&1 || true
    fi
}
