#!/usr/bin/env bash
# Installs Tripwire into ./.venv. `scripts/setup.sh` for running it, `scripts/setup.sh dev` for
# the test suite too (test tools, framework integrations, Chromium for the browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="all"
[ "${1:-}" = "dev" ] && extras="dev"

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# An unpinned torch would resolve to a CUDA build of several GB: install the CPU 2.13.0 first
# when torch is missing; the project itself only asks for torch>=2.2.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    "${pip[@]}" "torch==2.13.0"
fi
echo "setup: installing tripwire[$extras]"
"${pip[@]}" -e ".[$extras]"

if [ "$extras" = "dev" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "setup: installing Chromium (browser tests)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: /usr/bin/chromium is missing; install it (apt-get install chromium) for the browser tests" >&2
    fi
fi
