#!/usr/bin/env bash
# Set up a virtual environment with the CPU build of torch and run the whole test suite, offline.
# The browser tests drive Debian's Chromium (Playwright never downloads a browser): installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium \
        || echo "could not install chromium: the real-browser tests will be skipped (apt-get install chromium)" >&2
fi
source scripts/setup.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest "$@"
