#!/usr/bin/env bash
# Build (once) and cache a zeroc-ice 3.6.5 wheel that works on Python 3.11+.
#
# PyPI carries only the 3.6.5 source, which does not compile on Python >= 3.11.
# Two one-line patches fix it (see shared/OMERO.md):
#   src/Slice.cpp : drop `#include <eval.h>` (header removed in 3.11)
#   src/Util.cpp  : PyThreadState_GET()->frame  ->  PyEval_GetFrame()
# The build takes about 5 minutes on 2 cores (the compiler runs on every core), so the wheel is cached in
# $DLCORE_WHEEL_CACHE (default ~/.cache/dlcore/wheels) and reused.
# A prebuilt wheel (e.g. Glencoe Software's) can be supplied with
# DLCORE_ICE_WHEEL=/path/to/zeroc_ice-3.6.5-*.whl instead.
#
# Prints the path of the wheel on its last line of stdout.
set -euo pipefail
PY=${PYTHON:-python3}
# The build below runs inside the unpacked sdist: make the interpreter and the cache absolute paths
# first, so that a relative PYTHON or DLCORE_WHEEL_CACHE (e.g. .venv/bin/python) still resolves.
case "$PY" in
  */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;;
  *) PY=$(command -v "$PY") || { echo "PYTHON=${PYTHON:-python3} is not on PATH" >&2; exit 2; } ;;
esac
[ -x "$PY" ] || { echo "PYTHON=$PY is not an executable interpreter" >&2; exit 2; }
cache=${DLCORE_WHEEL_CACHE:-$HOME/.cache/dlcore/wheels}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
if [ -n "${DLCORE_ICE_WHEEL:-}" ]; then
  [ -f "$DLCORE_ICE_WHEEL" ] || { echo "DLCORE_ICE_WHEEL=$DLCORE_ICE_WHEEL does not exist" >&2; exit 2; }
  echo "$DLCORE_ICE_WHEEL"; exit 0
fi
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
existing=$(ls "$cache"/zeroc_ice-3.6.5-"$tag"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$existing" ]; then echo "$existing"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building zeroc-ice 3.6.5 wheel for $tag (about 8 minutes, cached in $cache)" >&2
"$PY" -m pip download --quiet --no-deps --no-binary :all: zeroc-ice==3.6.5 -d "$work" >&2
tar -xzf "$work"/zeroc-ice-3.6.5.tar.gz -C "$work"
src="$work/zeroc-ice-3.6.5"
sed -i '/#include <eval.h>/d' "$src/src/Slice.cpp"
sed -i 's/PyThreadState_GET()->frame/PyEval_GetFrame()/' "$src/src/Util.cpp"
grep -q 'PyEval_GetFrame()' "$src/src/Util.cpp" || { echo "patching Util.cpp failed" >&2; exit 1; }
# compile the extension's ~400 C++ files on every core (setuptools' build_ext --parallel)
printf '\n[build_ext]\nparallel = %s\n' "$(nproc 2>/dev/null || echo 2)" >> "$src/setup.cfg"
(cd "$src" && "$PY" -m pip wheel --quiet --no-deps -w "$work/dist" . >&2)
whl=$(ls "$work"/dist/zeroc_ice-*.whl | head -n1)
cp "$whl" "$cache/"
echo "$cache/$(basename "$whl")"
