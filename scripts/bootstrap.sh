#!/usr/bin/env bash
# Installs everything the project needs, idempotently, with no terminal:
#   - Debian packages: redis-server, a JDK, Maven and Prometheus (only when missing)
#   - a project virtualenv (.venv) with the package and its test/dev extras
#   - the Kafka broker's jars from Maven Central, cached per Kafka version
# Every step is skipped when its result is already there, so a second run takes a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
export DEBIAN_FRONTEND=noninteractive

say() { printf 'bootstrap: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else say "need root to run: $*"; return 1; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- system packages --------------------------------------------------------
command -v redis-server >/dev/null 2>&1 || { say "installing redis-server"; apt_install redis-server; }
command -v java >/dev/null 2>&1 || { say "installing a JDK"; apt_install openjdk-17-jdk-headless; }
command -v mvn >/dev/null 2>&1 || { say "installing maven"; apt_install maven; }
# Prometheus and promtool: the alert rules' unit tests and the scrape integration test.
# (The package also installs a system service; the tests start their own server on a free
# loopback port and never use it.)
command -v promtool >/dev/null 2>&1 || { say "installing prometheus"; apt_install prometheus; }

# --- python virtualenv --------------------------------------------------------
pick_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}
py=$(pick_python) || { say "installing python3"; apt_install python3 python3-venv; py=$(pick_python); }

if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $py"
    "$py" -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; "$py" -m venv .venv; }
fi
stamp=.venv/.installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing python packages into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'
    echo "$want" > "$stamp"
fi

# --- kafka jars ---------------------------------------------------------------
.venv/bin/python -m devcluster fetch-kafka >&2
