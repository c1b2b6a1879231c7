#!/usr/bin/env bash
# dawnchorus developer entry point: sets up what it needs, then runs.
#   ./dev.sh demo   replay the bundled recording with the bundled default model
#   ./dev.sh test   run the test suite (installs system packages when root)
#   ./dev.sh lint   ruff and mypy over edge/ and trainer/ (settings in pyproject.toml)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DAWNCHORUS_VENV:-.venv}
PY=${PYTHON:-python3}

need_venv() {  # $1: pip extras to install
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$1"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e ".[$1]"
        touch "$stamp"
    fi
}

system_packages() {
    local pkgs=(mosquitto libportaudio2 libsndfile1 libasound2 libasound2-plugins alsa-utils systemd pulseaudio pulseaudio-utils openssl chromium faketime)
    local missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing system packages: ${missing[*]} (install them with apt-get)" >&2
        exit 1
    fi
}

case "${1:-}" in
    demo)
        shift
        dpkg -s libsndfile1 >/dev/null 2>&1 || system_packages
        need_venv edge
        exec "$VENV/bin/python" -m edge replay "$@"
        ;;
    test)
        shift
        system_packages
        need_venv dev
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    lint)
        shift
        need_venv dev
        "$VENV/bin/python" -m ruff check edge trainer
        exec "$VENV/bin/python" -m mypy
        ;;
    *)
        echo "usage: $0 demo|test|lint [args]" >&2
        exit 2
        ;;
esac
