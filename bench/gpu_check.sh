#!/usr/bin/env bash
# The GPU check: on a bare CUDA machine with torch, transformers and numpy (no faiss, no internet),
# install the other needs from .whl/ (bench/fetch_wheels.sh), then measure the 7B shape at 224 and 512:
# forward-only, the model card's loop, and `lookalike` indexing, then each SDPA attention backend and a CUDA-graph
# single query (--variants). Measured on an H200 (2026-11-30, bench/results/gpu/h200-2026-11-30): 415 s in all
# with --compile (bench/throughput.py 366 s of it, compilation 107 s of those), so about 5 minutes without.
# Results go to $OUT (or bench/results/gpu), written after each stage: a stage that fails is recorded and the
# others still run, and the timed parts stop at --limit SECONDS in all (345 by default, 480 with --compile; at
# least 70: 10 for the throughput and 60 for the search), keeping what they finished, so that a short window on a
# lent machine always brings figures back. Exit status: 0 all measured; 3 nothing measured (the message says
# why); 4 stopped at the limit; another, a measurement failed (throughput.log says which).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/results/gpu}"
mkdir -p "$out_dir"
stop() { echo "gpu_check: $*" | tee -a "$out_dir/gpu_check.log" >&2; exit 3; }
# --no-search leaves out the search timing below and --limit S sets the time limit; every other argument goes to
# bench/throughput.py, after the script's own (so --no-variants, --repeat 3 or --resolutions 512 override them)
search=1 limit="" args=()
while (( $# )); do
    case $1 in
        --no-search) search=0 ;;
        --limit) limit=${2:-}; [[ $limit =~ ^[0-9]+$ ]] || stop "--limit takes whole seconds, not '$limit'"; shift ;;
        --compile) args+=("$1"); limit=${limit:-480} ;;
        *) args+=("$1") ;;
    esac
    shift
done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out_dir/nvidia-smi.csv" || true
if [[ -d .whl ]]; then
    site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
    # by name from bench/gpu_wheels.txt: pip takes the wheel that fits this Python and passes over any other
    python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --target "$site" \
        -r bench/gpu_wheels.txt 2>&1 | tee -a "$out_dir/gpu_check.log" \
        || stop "the wheels in .whl/ (fetched for Python $(cat .whl/PYTHON 2>/dev/null || echo '?')) do not install" \
                "on this machine's $(python3 -V 2>&1): run 'bash bench/fetch_wheels.sh X.Y' for its version where" \
                "PyPI can be reached, and carry .whl"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import faiss, sqlite_utils, rasterio" 2>/dev/null \
    || stop "faiss-cpu, sqlite-utils and rasterio are needed and not here: run 'bash bench/fetch_wheels.sh' where" \
            "PyPI can be reached and carry .whl to this machine (nothing was measured)"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
limit=$(( 10#${limit:-345} ))
search_seconds=$(( search ? 60 : 0 ))  # the search took 49 s on the H200
throughput_seconds=$(( limit - search_seconds > 10 ? limit - search_seconds : 10 ))
status=0  # a failure here still lets the search timing below run; the script exits with it at the end
started=$SECONDS
# SIGINT at the limit: throughput.py writes what it finished and exits; killed 20 s later if it does not
timeout -s INT -k 20 "$throughput_seconds" python3 bench/throughput.py --device cuda --shape vit7b16 \
    --images samples/naip --variants --out "$out_dir" ${args[@]+"${args[@]}"} 2>&1 | tee "$out_dir/throughput.log" \
    || status=$?
if (( status == 124 || status == 137 )); then  # timeout's own codes: told apart from the device's time-out
    echo "gpu_check: bench/throughput.py stopped at its limit of $throughput_seconds s; the stages it finished are" \
         "in $out_dir" | tee -a "$out_dir/throughput.log" >&2
    status=4
fi
# issue 7: 1M x 4096 float16 exact search in torch (faiss-gpu cannot be installed here), about a minute, CUDA only
left=$(( limit - (SECONDS - started) ))
if (( search )) && python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    timeout -s INT -k 10 $(( left > search_seconds ? left : search_seconds )) python3 bench/search_scale.py \
        --torch-exact --out "$out_dir/search_scale_torch.json" 2>&1 | tee "$out_dir/search_scale_torch.log" || true
fi
exit "$status"
