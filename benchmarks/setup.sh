#!/usr/bin/env bash
# Sets up what `make bench` needs; idempotent (a no-op when everything is in place):
#   - wrk, from Debian (scripts/apt-install.sh);
#   - one virtualenv per peer server under benchmarks/.venvs/ (kserve, mlserver), from the pinned
#     benchmarks/requirements-*.txt, except numpy / scikit-learn / joblib / xgboost, which follow
#     the versions in Shipyard's venv (so the models run.py trains there load the same everywhere).
# A peer's venv is rebuilt when its requirements files, those versions or the Python change.
# Usage: bash benchmarks/setup.sh [PROJECT_PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT_PY=${1:-.venv/bin/python}

bash scripts/apt-install.sh wrk

# The peers use the same interpreter as Shipyard's venv.
BASE_PY=$("$PROJECT_PY" -c 'import sys; print(getattr(sys, "_base_executable", None) or sys.executable)')
ML_PINS=$("$PROJECT_PY" - <<'PY'
import importlib.metadata as m

pins = [f"{name}=={m.version(name)}" for name in ("numpy", "scikit-learn", "joblib")]
for dist in ("xgboost-cpu", "xgboost"):  # xgboost-cpu: the same library without ~300 MB of CUDA wheels
    try:
        pins.append(f"xgboost-cpu=={m.version(dist)}")
        break
    except m.PackageNotFoundError:
        pass
print(" ".join(pins))
PY
)
ML_NAMES='^(numpy|scikit-learn|joblib|xgboost|xgboost-cpu)=='

setup_peer() {
  local peer=$1 venv=benchmarks/.venvs/$1 lock=benchmarks/requirements-$1.txt nodeps=benchmarks/requirements-$1-nodeps.txt
  local files=("$lock")
  [ -f "$nodeps" ] && files+=("$nodeps")
  local want
  want="$(cat "${files[@]}" | sha256sum | cut -c1-16) $ML_PINS $("$BASE_PY" -V 2>&1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.bench-installed" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "setting up $venv ($ML_PINS)"
  rm -rf "$venv"
  "$BASE_PY" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  local filtered
  filtered=$(mktemp)
  grep -vE "$ML_NAMES" "$lock" > "$filtered"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet -r "$filtered" $ML_PINS
  rm -f "$filtered"
  if [ -f "$nodeps" ]; then
    "$venv/bin/python" -m pip install --quiet --no-deps -r "$nodeps"
  fi
  echo "$want" > "$venv/.bench-installed"
}

setup_peer kserve
setup_peer mlserver
