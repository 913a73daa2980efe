#!/usr/bin/env bash
# Set up a virtual environment with the CPU build of torch and run the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest "$@"
