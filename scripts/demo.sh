#!/usr/bin/env bash
# Set up lookalike and run the main job on the bundled sample collection (350 NAIP chips):
# index them into ./demo-store, search with one chip, describe the store.
#
#   bash scripts/demo.sh                  # the default model: DINOv3 ViT-7B/16 SAT-493M FP16 from the Hub
#   LOOKALIKE_MODEL=/path/to/model bash scripts/demo.sh    # a local copy of it
#   bash scripts/demo.sh --random-model   # offline smoke test with a tiny random DINOv3 (meaningless neighbours)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; fi
source scripts/setup.sh "$extra"

store_dir=demo-store
if [ "${1:-}" = "--random-model" ]; then
    export LOOKALIKE_MODEL="$PWD/.demo-model/tiny-dinov3-sat493m"
    [ -f "$LOOKALIKE_MODEL/config.json" ] || lookalike random-model "$LOOKALIKE_MODEL"
    store_dir=demo-store-random
    echo "NOTE: a random model checks the set-up; its neighbours mean nothing."
fi

if ! lookalike index samples/naip --store "$store_dir"; then
    cat >&2 <<'MSG'

The demo could not index the sample. If the model could not be downloaded, fetch it on a machine
with internet access (hf download mirekphd/dinov3-vit7b16-pretrain-sat493m-fp16 --local-dir DIR; keep
"sat493m" in the name of DIR, it selects the satellite normalisation),
copy DIR here, and run: LOOKALIKE_MODEL=DIR bash scripts/demo.sh
To check the set-up without the weights: bash scripts/demo.sh --random-model
MSG
    exit 1
fi
query=samples/naip/naip_20180716_r0256_c0384.jpg
echo
echo "nearest neighbours of $query (the same place in other years should rank high):"
lookalike search "$query" --store "$store_dir" -k 10
echo
lookalike info --store "$store_dir"
