#!/usr/bin/env bash
# Download the wheels gpu_check.sh installs on a bare GPU machine (Python 3.12, no internet) into .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
# The GPU image has torch, transformers, numpy, pillow, tqdm, attrs, certifi, click and pyarrow, not these. rasterio
# (36 MB) is there because the pipeline imports indexer.scenes; all six come to about 55 MB of the 64 MiB a run carries.
for pkg in faiss-cpu==1.15.1 sqlite-utils==4.2.1 sqlite-fts4==1.0.3 click-default-group==1.2.4 rasterio==1.4.4 \
    affine==3.0.1; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pkg"
done
ls .whl
