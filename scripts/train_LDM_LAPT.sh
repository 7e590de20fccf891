#!/usr/bin/env bash
# Stage 3: lesion-aware post-training (LAPT) of the stage-2 cLDM into cLDM-PT
# (configs/latent-diffusion/ldm_lapt.yaml; paper Section 2.2, Eqs. 5-8). The config's
# model.params.ckpt_path must point to the stage-2 checkpoint: set it there, or with LDM_CKPT=...,
# or as an override. INIT_WEIGHTS=ema starts from the stage-2 EMA weights instead of its training weights (raw,
# the default and the reference's).
# Extra arguments are passed on to main.py, e.g.
#   LDM_CKPT=logs/<stage-2 run>/checkpoints/last.ckpt bash scripts/train_LDM_LAPT.sh
#   bash scripts/train_LDM_LAPT.sh model.params.lambda_image=0.05 model.params.lambda_lesion=0.1
#   bash scripts/train_LDM_LAPT.sh data.params.batch_size=48 lightning.trainer.precision=bf16-mixed \
#       model.params.decoder_checkpointing=true           # the paper's batch on one large GPU
# The loss-weight grid of the paper's Table 2: python scripts/lambda_sweep.py --help
# Resume a run with: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/latent-diffusion/ldm_lapt.yaml}
ARGS=(--base "$CONFIG" -t --name ldm_lapt)
if [[ -n "${LDM_CKPT:-}" ]]; then
    ARGS+=("model.params.ckpt_path=$LDM_CKPT")
fi
if [[ -n "${INIT_WEIGHTS:-}" ]]; then
    ARGS+=("model.params.init_weights=$INIT_WEIGHTS")
fi
exec "$PYTHON" main.py "${ARGS[@]}" "$@"
