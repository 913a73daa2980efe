#!/usr/bin/env bash
# Download the wheels gpu_check.sh installs on a bare GPU machine (no internet) into .whl/: those in
# bench/gpu_wheels.txt, for that machine's Python (3.12 on the lent H100/H200 image; another as the first argument,
# e.g. `bash bench/fetch_wheels.sh 3.11`). The new set replaces .whl/ whole once every wheel is in, so no wheel of an
# earlier fetch is carried, and a fetch that fails leaves the set there was.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${1:-3.12}"
fetched=$(mktemp -d .whl.new.XXXXXX)
trap 'rm -rf "$fetched"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$fetched" -r bench/gpu_wheels.txt
echo "$python_version" > "$fetched/PYTHON"
rm -rf .whl
mv "$fetched" .whl
ls .whl
