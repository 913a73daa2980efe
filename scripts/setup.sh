# Sourced by demo.sh and test.sh: make (or reuse) the virtual environment and install lookalike into it.
# Usage: source scripts/setup.sh EXTRA   (EXTRA: cpu, gpu or test)
set -euo pipefail
venv_dir="${LOOKALIKE_VENV:-.venv}"
if [ ! -x "$venv_dir/bin/python" ]; then
    python3 -m venv "$venv_dir"
fi
# shellcheck disable=SC1091
. "$venv_dir/bin/activate"
python -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch is pinned here, not in pyproject: 2.13.0 is the CPU build on the project's machines and
# the CUDA build from PyPI elsewhere. Set LOOKALIKE_TORCH to choose another ("torch==2.9.1", ...).
python -m pip install --quiet "${LOOKALIKE_TORCH:-torch==2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
python -m pip install --quiet -e ".[$1]" 2>&1 | grep -v '^WARNING: Location' || true
python -c "import torch, transformers, faiss, sqlite_utils" || { echo "set-up failed: see the pip output above" >&2; exit 1; }
if [ "$1" = test ]; then  # the Ray tests run in CI: a missing ray extra must fail here, not skip them
    python -c "import ray.data, pyarrow" || { echo "set-up failed: the ray extra did not install" >&2; exit 1; }
fi
