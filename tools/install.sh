#!/usr/bin/env bash
# Install dlcore and its whole stack into ./.venv (reused when it already exists).
#
#   bash tools/install.sh            # idempotent; a second run only checks
#
# Steps: Debian build packages (when run as root and missing), the virtual environment, torch
# (pip's torch==2.13.0; set DLCORE_TORCH to override, e.g. a CUDA build on GPU nodes), the
# zeroc-ice 3.6.5 wheel (built once by tools/build_ice_wheel.sh and cached, or DLCORE_ICE_WHEEL),
# then dlcore itself in editable mode with every extra, and the `omero dl` plugin shim.
set -euo pipefail
# Paths the caller gives (DLCORE_VENV, PYTHON, DLCORE_ICE_WHEEL, DLCORE_WHEEL_CACHE) are taken relative
# to the caller's working directory and made absolute before anything changes directory.
abspath() { case "$1" in /*) echo "$1" ;; */*|.*) echo "$PWD/$1" ;; *) echo "$1" ;; esac; }
[ -z "${DLCORE_VENV:-}" ] || DLCORE_VENV=$(abspath "$DLCORE_VENV")
[ -z "${PYTHON:-}" ] || PYTHON=$(abspath "$PYTHON")
[ -z "${DLCORE_ICE_WHEEL:-}" ] || export DLCORE_ICE_WHEEL=$(abspath "$DLCORE_ICE_WHEEL")
[ -z "${DLCORE_WHEEL_CACHE:-}" ] || export DLCORE_WHEEL_CACHE=$(abspath "$DLCORE_WHEEL_CACHE")
cd "$(dirname "$0")/.."
venv=${DLCORE_VENV:-$PWD/.venv}
py=${PYTHON:-python3}

need_apt=()
command -v g++ >/dev/null || need_apt+=(g++)
"$py" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
"$py" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' || need_apt+=(python3-dev)
[ -e /usr/include/bzlib.h ] || need_apt+=(libbz2-dev)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] Debian packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[install] please install first: sudo apt-get install ${need_apt[*]}" >&2; exit 1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[install] creating $venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
fi
pip=("$venv/bin/python" -m pip install -q)

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "[install] torch ${DLCORE_TORCH:-torch==2.13.0}"
  "${pip[@]}" ${DLCORE_TORCH:-torch==2.13.0}
fi
if ! "$venv/bin/python" -c 'import Ice' 2>/dev/null; then
  wheel=$(PYTHON="$venv/bin/python" bash tools/build_ice_wheel.sh | tail -n1)
  echo "[install] zeroc-ice from $wheel"
  "${pip[@]}" "$wheel"
fi
stamp="$venv/.dlcore-install-stamp"
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import dlcore' 2>/dev/null; then
  echo "[install] dlcore and its dependencies"
  "${pip[@]}" -e ".[all,test,deploy]"
  echo "$want" > "$stamp"
fi
# `omero dl`: omero-py loads every omero/plugins/*.py it finds; put dlcore's shim beside its own plugins
plugins=$("$venv/bin/python" -c 'import omero.plugins, os; print(os.path.dirname(omero.plugins.__file__))')
cmp -s omero/plugins/dl.py "$plugins/dl.py" || cp omero/plugins/dl.py "$plugins/dl.py"
echo "[install] ready: $venv/bin/dlcore"
