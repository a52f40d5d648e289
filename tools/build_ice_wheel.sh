#!/usr/bin/env bash
# Build (once) and cache a zeroc-ice 3.6.5 wheel that works on Python 3.11+.
#
# PyPI carries only the 3.6.5 source, which does not compile on Python >= 3.11.
# Two one-line patches fix it (see shared/OMERO.md):
#   src/Slice.cpp : drop `#include <eval.h>` (header removed in 3.11)
#   src/Util.cpp  : PyThreadState_GET()->frame  ->  PyEval_GetFrame()
# The build takes about 4 minutes on 2 cores (the compiler runs on every core), so the wheel is cached in
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
echo "building zeroc-ice 3.6.5 wheel for $tag (minutes; cached in $cache)" >&2
"$PY" -m pip download --quiet --no-deps --no-binary :all: zeroc-ice==3.6.5 -d "$work" >&2
tar -xzf "$work"/zeroc-ice-3.6.5.tar.gz -C "$work"
src="$work/zeroc-ice-3.6.5"
sed -i '/#include <eval.h>/d' "$src/src/Slice.cpp"
sed -i 's/PyThreadState_GET()->frame/PyEval_GetFrame()/' "$src/src/Util.cpp"
grep -q 'PyEval_GetFrame()' "$src/src/Util.cpp" || { echo "patching Util.cpp failed" >&2; exit 1; }
# Compile the extension's C++ files on every core.  zeroc-ice builds one extension of ~400 files, and
# build_ext's own --parallel only runs whole extensions side by side, so the compiler's per-file loop is
# replaced by a thread pool (each file is a separate compiler process) before setup.py runs.
python_patch=$(cat <<'PY'
import concurrent.futures as _futures, os as _os
import setuptools  # noqa: F401  (makes distutils setuptools' own copy, the one build_ext uses)
import distutils.ccompiler as _ccompiler

def _compile_in_parallel(self, sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                         extra_preargs=None, extra_postargs=None, depends=None):
    macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
        output_dir, macros, include_dirs, sources, depends, extra_postargs)
    cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)
    def one(obj):
        src, ext = build[obj]
        self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
    with _futures.ThreadPoolExecutor(_os.cpu_count() or 2) as pool:
        list(pool.map(one, [o for o in objects if o in build]))
    return objects

_ccompiler.CCompiler.compile = _compile_in_parallel
PY
)
{ printf '%s\n' "$python_patch"; cat "$src/setup.py"; } > "$src/setup.py.new" && mv "$src/setup.py.new" "$src/setup.py"
(cd "$src" && "$PY" -m pip wheel --quiet --no-deps -w "$work/dist" . >&2)
whl=$(ls "$work"/dist/zeroc_ice-*.whl | head -n1)
cp "$whl" "$cache/"
echo "$cache/$(basename "$whl")"
