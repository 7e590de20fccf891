#!/usr/bin/env bash
# The checks that need a GPU, in one run: the CUDA-only tests, the paper-scale benchmark
# for each of its targets, and the whole pipeline at minimal size on the GPU. CI has no GPU, so
# these are run by hand on one H100 / H200 / A100 class GPU (about 8 minutes with REPEATS=3).
#
#   bash scripts/gpu_checks.sh [OUT_DIR]          # default OUT_DIR: gpu_checks
#
# Environment: PYTHON (default python), REPEATS and WARMUP (benchmark medians; default 5 and 2),
# DEVICE (default cuda) and BENCH_CONFIG (default configs/benchmark/paper.yaml): with DEVICE=cpu and
# the small config the same script runs on a CPU, which is how it is tested.
#
# Every check runs even when an earlier one fails; the summary at the end lists each one's exit
# status, and the script exits 1 when any failed. Logs and the benchmark's JSON go to OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${1:-gpu_checks}
REPEATS=${REPEATS:-5}
WARMUP=${WARMUP:-2}
DEVICE=${DEVICE:-cuda}
BENCH_CONFIG=${BENCH_CONFIG:-configs/benchmark/paper.yaml}

if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_checks: torch sees no CUDA device (run it on a GPU machine, or DEVICE=cpu to try it)" >&2
    exit 2
fi
mkdir -p "$OUT"

SUMMARY=()
# check NAME TIMEOUT_S COMMAND...: run it with its output in OUT/NAME.log (and on the terminal)
check() {
    local name=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    printf '\n==> %s\n' "$name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    SUMMARY+=("$(printf '%-22s rc %-4s %5ss' "$name" "$rc" "$(( $(date +%s) - t0 ))")")
}

check environment 60 "$PYTHON" -c "
import platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| cudnn', torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f'gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs')"

# the tests that skip without CUDA: fused attention kernels, torch.compile, bf16 autocast and
# decoding, CUDA peak memory, the benchmark on CUDA
check cuda_tests 600 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k "cuda or fused_attention_kernels" \
    tests/test_fast_paths.py tests/test_unet.py tests/test_latent_diffusion.py \
    tests/test_autoencoder_interface.py tests/test_benchmark.py

# memory at the paper's batch (bf16 + decoder checkpointing, the config's setting), utilisation,
# sampling throughput and the projected time for the 4015-slice test set, the VQGAN step
check benchmark_ckpt 900 "$PYTHON" scripts/benchmark.py --config "$BENCH_CONFIG" --device "$DEVICE" \
    --repeats "$REPEATS" --warmup "$WARMUP" --json "$OUT/benchmark_ckpt.json"

# the step-time ratio without the decoder's recomputation (needs room for its activations)
check benchmark_ratio 600 "$PYTHON" scripts/benchmark.py --config "$BENCH_CONFIG" --device "$DEVICE" \
    --repeats "$REPEATS" --warmup "$WARMUP" --only ldm,lapt lapt.params.decoder_checkpointing=false \
    --json "$OUT/benchmark_ratio.json"

# the whole pipeline (main.py on the GPU, sample_LDM.py, evaluate.py) at minimal size
if [ "$DEVICE" = cuda ]; then ACCEL=gpu; else ACCEL=cpu; fi
rm -rf "$OUT/demo"
check demo_minimal 600 env PYTHON="$PYTHON" DEMO_OUT="$OUT/demo" DEMO_ACCELERATOR="$ACCEL" \
    DEMO_N_TRAIN=2 DEMO_N_VAL=1 DEMO_N_TEST=1 DEMO_SLICES=6 DEMO_VQGAN_STEPS=20 DEMO_LDM_STEPS=20 \
    DEMO_LAPT_STEPS=20 DEMO_SAMPLE_STEPS=10 bash scripts/demo.sh

printf '\n==> summary (logs and JSON in %s)\n' "$OUT"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
! grep -qv " rc 0 " "$OUT/summary.txt"
