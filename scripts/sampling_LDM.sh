#!/usr/bin/env bash
# Synthesise DWI + ADC NIfTI volumes for every patient of a cohort with a trained run.
# Edit RUN and DATA (or pass them as environment variables); extra arguments go to sample_LDM.py,
# e.g. `bash scripts/sampling_LDM.sh --device cuda:1` or a dotlist override.
#   RUN   run directory (logs/<timestamp>_<name>) or a checkpoint file
#   DATA  preprocessed split, or a raw NIfTI cohort folder (preprocessed on the fly)
#   SAMPLER  ddim (the paper's) or dpmsolver++ (default: the run's config, DDIM; docs/results.md "Samplers")
#   OUT   output folder (default: <RUN>/samples/<STEPS>, <RUN>/samples/<SAMPLER>_<STEPS> for DPM-Solver++)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RUN=${RUN:-path/to/logs/run_or_checkpoint.ckpt}
DATA=${DATA:-path/to/preprocessed/test}
STEPS=${STEPS:-200}
ARGS=(-r "$RUN" --data "$DATA" --n_samples "${N_SAMPLES:-1}" --batch_size "${BATCH_SIZE:-48}" --steps "$STEPS"
      --seed "${SEED:-23}")
if [[ -n "${SAMPLER:-}" ]]; then ARGS+=(--sampler "$SAMPLER"); fi
if [[ -n "${OUT:-}" ]]; then ARGS+=(--outdir "$OUT"); fi
"$PYTHON" scripts/sample_LDM.py "${ARGS[@]}" "$@"
