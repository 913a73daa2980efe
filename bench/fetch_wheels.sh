#!/usr/bin/env bash
# Download the wheels gpu_check.sh installs on a bare GPU machine (no internet) into .whl/: those in
# bench/gpu_wheels.txt, for that machine's Python (3.12 on the lent H100/H200 image; another as the first argument,
# e.g. `bash bench/fetch_wheels.sh 3.11`). .whl/ is emptied first, so that no wheel of an earlier fetch is carried.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${1:-3.12}"
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r bench/gpu_wheels.txt
echo "$python_version" > .whl/PYTHON
ls .whl
