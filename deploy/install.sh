#!/usr/bin/env bash
# Install (or update, or remove) the dawnchorus edge daemon on Raspberry Pi OS
# Bookworm or Trixie (any Debian-based system with systemd works the same way).
#
#   sudo deploy/install.sh               install or update, enable and (re)start the service
#   sudo deploy/install.sh --uninstall   stop and remove the service and /opt/dawnchorus;
#                                        keeps /etc/dawnchorus and /var/lib/dawnchorus (your data)
#   sudo deploy/install.sh --uninstall --purge   also remove those and the 'dawnchorus' user
#
#   deploy/install.sh --root DIR         lay everything down under DIR instead of /, touching
#                                        nothing else: no apt-get, no user, no systemctl
#                                        (what the tests use to check what the installer writes)
#   --offline                            no downloads: the virtualenv sees the system's Python
#                                        packages and only dawnchorus itself is installed into it
#   --no-pip                             create the virtualenv but install nothing into it
#
# Idempotent: running it again updates the code and the unit, never overwrites an
# existing /etc/dawnchorus/config.yaml, and restarts the service.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
MODE=install
PURGE=0
PIP=online
PY=${PYTHON:-python3}
UNIT=dawnchorus-edge.service
USER_NAME=dawnchorus

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$(mkdir -p "$2" && cd "$2" && pwd); shift ;;
        --root=*) ROOT=$(mkdir -p "${1#*=}" && cd "${1#*=}" && pwd) ;;
        --uninstall) MODE=uninstall ;;
        --purge) PURGE=1 ;;
        --offline) PIP=offline ;;
        --no-pip) PIP=none ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

OPT=$ROOT/opt/dawnchorus
ETC=$ROOT/etc/dawnchorus
STATE=$ROOT/var/lib/dawnchorus
UNIT_DIR=$ROOT/etc/systemd/system

say() { echo "install.sh: $*"; }
system() {  # run a command that changes the system; in --root mode only say it
    if [ -n "$ROOT" ]; then say "skipped (--root): $*"; else "$@"; fi
}

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or use --root DIR for a scratch install" >&2
    exit 1
fi

codename=unknown
if [ -r /etc/os-release ]; then
    codename=$(. /etc/os-release; echo "${VERSION_CODENAME:-unknown}")
fi
case "$codename" in
    bookworm|trixie) ;;
    *) say "note: tested on Raspberry Pi OS / Debian bookworm and trixie; this is '$codename'" ;;
esac

if [ "$MODE" = uninstall ]; then
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null; then
        systemctl disable --now "$UNIT" 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/$UNIT"
    system systemctl daemon-reload
    rm -rf "$OPT"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$STATE"
        if [ -z "$ROOT" ] && getent passwd "$USER_NAME" >/dev/null; then
            userdel "$USER_NAME" || true
        fi
        say "removed dawnchorus, its configuration, its data and its user"
    else
        say "removed dawnchorus; kept $ETC and $STATE (--purge removes them)"
    fi
    exit 0
fi

# 1. system packages (PortAudio for sounddevice, libsndfile for soundfile, ALSA tools)
if [ -z "$ROOT" ]; then
    pkgs=(python3 python3-venv python3-pip libportaudio2 libsndfile1 alsa-utils)
    missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    say "skipped (--root): apt-get install python3 python3-venv python3-pip libportaudio2 libsndfile1 alsa-utils"
fi

# 2. the service user, in the 'audio' group for /dev/snd
if [ -z "$ROOT" ]; then
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/dawnchorus --no-create-home \
            --shell /usr/sbin/nologin --comment "dawnchorus edge daemon" "$USER_NAME"
        say "created user $USER_NAME"
    fi
    getent group audio >/dev/null || groupadd --system audio
    usermod -a -G audio "$USER_NAME"
else
    say "skipped (--root): useradd --system --user-group $USER_NAME; usermod -a -G audio $USER_NAME"
fi

# 3. the code and its virtualenv
mkdir -p "$OPT"
rm -rf "$OPT/src.new"
mkdir -p "$OPT/src.new"
cp -r "$SRC/edge" "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/config.example.yaml" "$OPT/src.new/"
[ -f "$SRC/CREDITS.md" ] && cp "$SRC/CREDITS.md" "$OPT/src.new/"
find "$OPT/src.new" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$OPT/src" && mv "$OPT/src.new" "$OPT/src"
cp "$SRC/README.md" "$OPT/README.md"
venv_args=()
[ -n "$ROOT" ] && venv_args+=(--copies)  # no symlinks out of the scratch root
[ "$PIP" = offline ] && venv_args+=(--system-site-packages)
if [ ! -x "$OPT/venv/bin/python" ]; then
    [ "$PIP" = none ] && venv_args+=(--without-pip)
    "$PY" -m venv "${venv_args[@]}" "$OPT/venv"
    say "created the virtualenv $OPT/venv"
fi
case "$PIP" in
    online)
        "$OPT/venv/bin/python" -m pip install -q --upgrade pip
        "$OPT/venv/bin/python" -m pip install -q --upgrade "$OPT/src[edge]"
        ;;
    offline)
        "$OPT/venv/bin/python" -m pip install -q --no-deps --no-index --no-build-isolation --upgrade "$OPT/src"
        ;;
    none) say "skipped (--no-pip): pip install $OPT/src[edge]" ;;
esac
if [ "$PIP" != none ]; then
    "$OPT/venv/bin/python" -m compileall -q "$OPT/venv/lib" >/dev/null || true
fi

# 4. the configuration: written once, never overwritten
mkdir -p "$ETC"
if [ ! -f "$ETC/config.yaml" ]; then
    host=$(hostname 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-64)
    sed "s/^device_id: recorder$/device_id: ${host:-recorder}/" "$SRC/config.example.yaml" > "$ETC/config.yaml"
    say "wrote $ETC/config.yaml (edit it, then: systemctl restart $UNIT)"
else
    say "kept the existing $ETC/config.yaml"
fi
cp "$SRC/config.example.yaml" "$ETC/config.example.yaml"
chmod 0640 "$ETC/config.yaml"
if [ -z "$ROOT" ]; then
    chgrp "$USER_NAME" "$ETC" "$ETC/config.yaml"
    chmod 0750 "$ETC"
fi
if [ "$PIP" != none ]; then
    if ! "$OPT/venv/bin/python" -m edge check-config "$ETC/config.yaml" >/dev/null; then
        "$OPT/venv/bin/python" -m edge check-config "$ETC/config.yaml" || true
        echo "install.sh: fix $ETC/config.yaml, then run this again" >&2
        exit 2
    fi
fi

# 5. the unit, enabled and (re)started
mkdir -p "$UNIT_DIR"
install -m 0644 "$SRC/systemd/$UNIT" "$UNIT_DIR/$UNIT"
system systemctl daemon-reload
system systemctl enable "$UNIT"
system systemctl restart "$UNIT"
say "installed into ${ROOT:-/}: $OPT, $ETC/config.yaml, $UNIT_DIR/$UNIT"
if [ -z "$ROOT" ]; then
    say "follow it with: journalctl -u ${UNIT%.service} -f"
fi
