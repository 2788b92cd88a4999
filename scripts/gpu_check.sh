#!/usr/bin/env bash
# One-shot GPU check of the benchmark (issue 7), run once from the repository root on a CUDA
# machine whose Python environment already holds the project's dependencies (installs nothing):
#
#   OUT=/path/to/results bash scripts/gpu_check.sh
#
# Writes under $OUT: gpu_check.log (environment + every table), bench_tiny_cuda.json,
# bench_sd15.json (bf16), bench_sd15_realsize_feedback.json and bench_sd15_channels_last.json, and
# runs the tests that need CUDA (pytest -m gpu).
# Expected to take 6-8 minutes on one H100, much of it building the random-weight SD-1.5 model
# (3.3 GB) and the real-size feedback models (3.3 GB) once into $BENCH_CACHE. Each run has
# its own time limit, so a failure still leaves the other results.
set -uo pipefail

OUT=${OUT:-$PWD/gpu_check_out}
CACHE=${BENCH_CACHE:-/tmp/editspecialists-bench}
LOG="$OUT/gpu_check.log"
mkdir -p "$OUT" "$CACHE"
export HF_HUB_DISABLE_PROGRESS_BARS=1 DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error

run() {  # run <seconds> <label> <benchmark flags...>
  local limit=$1 label=$2
  shift 2
  echo "== $label: python scripts/benchmark.py $*" | tee -a "$LOG"
  timeout "$limit" python scripts/benchmark.py --cache="$CACHE" --device=cuda --threads=8 "$@" 2>&1 \
    | grep -v -e "^Loading" -e "^Writing" | tee -a "$LOG"
  echo "== $label: exit status ${PIPESTATUS[0]}" | tee -a "$LOG"
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, \
'| peft', peft.__version__)"
} 2>&1 | tee "$LOG"

run 120 tiny --model=tiny --out="$OUT/bench_tiny_cuda.json"
run 300 sd15 --model=sd15 --dtype=bf16 --repeats=5 --out="$OUT/bench_sd15.json"
# The default reward's feedback models at their real size (random weights, built once into the
# cache, 3.3 GB): per-image constants speed-up and the GPU memory reward.offload frees.
run 300 sd15_realsize_feedback --model=sd15 --dtype=bf16 --repeats=3 --feedback=realsize \
  --out="$OUT/bench_sd15_realsize_feedback.json"
run 150 sd15_channels_last --model=sd15 --dtype=bf16 --repeats=5 --channels_last --feedback=none \
  --out="$OUT/bench_sd15_channels_last.json"
# The tests that need CUDA (pytest -m gpu: the specialist pipeline under enable_model_cpu_offload).
echo "== gpu tests: python -m pytest -m gpu" | tee -a "$LOG"
timeout 300 python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -n 30 | tee -a "$LOG"
echo "== gpu tests: exit status ${PIPESTATUS[0]}" | tee -a "$LOG"
