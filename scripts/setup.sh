#!/usr/bin/env bash
# Installs Tripwire into ./.venv. `scripts/setup.sh` for running it, `scripts/setup.sh dev` for
# the test suite too (test tools, framework integrations, Chromium and openssl for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="all"
[ "${1:-}" = "dev" ] && extras="dev"

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# When torch is missing, pin the 2.13.0 this project was tested with, from the pip index in
# use: PyPI's Linux wheel is the CUDA build (several GB); for the CPU build install it first
# from https://download.pytorch.org/whl/cpu (README). The project itself asks for torch>=2.2.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    "${pip[@]}" "torch==2.13.0"
fi
echo "setup: installing tripwire[$extras]"
"${pip[@]}" -e ".[$extras]"

# Outside Python, the tests use Chromium (browser tests), openssl (a certificate for the
# TLS email tests) and faketime (a trainer with a skewed clock); with CI=true a missing one
# fails them (tests/needs.py).
if [ "$extras" = "dev" ]; then
    system=()
    [ -x /usr/bin/chromium ] || system+=(chromium)
    command -v openssl >/dev/null || system+=(openssl)
    command -v faketime >/dev/null || system+=(faketime)
    if [ ${#system[@]} -gt 0 ]; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
            echo "setup: installing ${system[*]} (browser, TLS email and clock tests)"
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${system[@]}" >/dev/null
        else
            echo "setup: missing ${system[*]}; install (apt-get install ${system[*]}) for the browser, TLS email and clock tests" >&2
        fi
    fi
fi
