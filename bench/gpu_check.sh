#!/usr/bin/env bash
# The GPU check: on a bare CUDA machine with torch, transformers and numpy (no faiss, no internet),
# install the other needs from .whl/ (bench/fetch_wheels.sh), then measure the 7B shape at 224 and 512:
# forward-only, the model card's loop, and `lookalike` indexing, then each SDPA attention backend and a CUDA-graph
# single query (--variants). Measured on an H200 (2026-11-30, bench/results/gpu/h200-2026-11-30): 415 s in all
# with --compile (bench/throughput.py 366 s of it, compilation 107 s of those), so about 5 minutes without.
# Results go to $OUT (or bench/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/results/gpu}"
mkdir -p "$out_dir"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out_dir/nvidia-smi.csv" || true
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# --no-search leaves out the search timing below; every other argument goes to bench/throughput.py, after the
# script's own (so --no-variants, --repeat 3 or --resolutions 512 override them: a short rerun)
search=1 args=()
for arg in "$@"; do
    if [[ $arg == --no-search ]]; then search=0; else args+=("$arg"); fi
done
status=0  # a failure here still lets the search timing below run; the script exits with it at the end
python3 bench/throughput.py --device cuda --shape vit7b16 --images samples/naip --variants --out "$out_dir" ${args[@]+"${args[@]}"} 2>&1 | tee "$out_dir/throughput.log" || status=$?
# issue 7: 1M x 4096 float16 exact search in torch (faiss-gpu cannot be installed here), about a minute, CUDA only
if (( search )) && python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    python3 bench/search_scale.py --torch-exact --out "$out_dir/search_scale_torch.json" 2>&1 | tee "$out_dir/search_scale_torch.log" || true
fi
exit "$status"
