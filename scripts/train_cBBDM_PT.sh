#!/usr/bin/env bash
# Generalisation (paper Table 3): lesion-aware post-training of a trained cBBDM (cBBDM-PT) with
# lambda_image 0.01 and lambda_lesion 0.02 (configs/bbdm/cbbdm_pt.yaml). The config's
# model.params.ckpt_path must point to the cBBDM checkpoint: set it there, or with CBBDM_CKPT=...,
# or as an override. Extra arguments are passed on to main.py, e.g.
#   CBBDM_CKPT=logs/<cbbdm run>/checkpoints/last.ckpt bash scripts/train_cBBDM_PT.sh
#   CBBDM_CKPT=... bash scripts/train_cBBDM_PT.sh data.params.batch_size=48 \
#       lightning.trainer.precision=bf16-mixed model.params.decoder_checkpointing=true
#   CONFIG=configs/demo/cbbdm_pt.yaml CBBDM_CKPT=... bash scripts/train_cBBDM_PT.sh   # the synthetic demo
# Resume a run with: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/bbdm/cbbdm_pt.yaml}
ARGS=(--base "$CONFIG" -t --name cbbdm_pt)
if [[ -n "${CBBDM_CKPT:-}" ]]; then
    ARGS+=("model.params.ckpt_path=$CBBDM_CKPT")
fi
exec "$PYTHON" main.py "${ARGS[@]}" "$@"
