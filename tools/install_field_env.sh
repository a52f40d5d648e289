#!/usr/bin/env bash
# The field-models environment: TIAToolbox and Cellpose with their own pinned libraries, in a second
# virtual environment beside dlcore's (their pins do not fit dlcore's: torch < 2.13, numpy < 2.1).
#
#   bash tools/install_field_env.sh        # ./.venv-field, or DLCORE_FIELD_VENV; idempotent
#
# then tell dlcore where it is, in dlcore.toml:   field_python = "/path/to/.venv-field/bin/python"
# (or DLCORE_FIELD_PYTHON).  dlcore runs imported TIAToolbox and Cellpose models in a worker process
# started with that Python (dlcore/fieldmodels/external.py); dlcore itself is installed into it without
# its dependencies, for the worker's code.  Nothing here is downloaded at run time.
set -euo pipefail
abspath() { case "$1" in /*) echo "$1" ;; */*|.*) echo "$PWD/$1" ;; *) echo "$1" ;; esac; }
[ -z "${DLCORE_FIELD_VENV:-}" ] || DLCORE_FIELD_VENV=$(abspath "$DLCORE_FIELD_VENV")
cd "$(dirname "$0")/.."
venv=${DLCORE_FIELD_VENV:-$PWD/.venv-field}
py=${PYTHON:-python3}
requirements=tools/field-env-requirements.txt

if [ ! -x "$venv/bin/python" ]; then
  echo "[field-env] creating $venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
fi
pip=("$venv/bin/python" -m pip install -q)
stamp="$venv/.dlcore-field-stamp"
want=$(cat "$requirements" "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  start=$(date +%s)
  echo "[field-env] TIAToolbox, torch and their pinned libraries ($requirements)"
  "${pip[@]}" -r "$requirements"
  echo "[field-env] Cellpose 3"
  # Cellpose 3 pins numpy < 2.1 (2.0.2, inside TIAToolbox's range); its opencv-python-headless must be the
  # same OpenCV as TIAToolbox's opencv-python, or the two would overwrite each other's cv2
  "${pip[@]}" cellpose==3.1.1.3 "opencv-python-headless==$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("opencv-python"))')"
  echo "[field-env] dlcore (the worker's code; its own dependencies are dlcore's environment's)"
  "${pip[@]}" --no-deps -e .
  echo "$want" > "$stamp"
  echo "[field-env] installed in $(( $(date +%s) - start )) s"
fi
"$venv/bin/python" - <<'PY'
import importlib
for name in ("dlcore.fieldmodels.worker", "tiatoolbox.models", "cellpose.models"):
    importlib.import_module(name)
from importlib.metadata import version
print("[field-env] " + ", ".join(f"{p} {version(p)}" for p in ("tiatoolbox", "cellpose", "torch", "numpy")))
PY
echo "[field-env] ready: field_python = \"$venv/bin/python\""
