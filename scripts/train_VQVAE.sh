#!/usr/bin/env bash
# Stage 1: train the VQGAN autoencoder on [DWI, ADC] slices (configs/autoencoder/VQGAN.yaml).
# The data paths in the config (data/npy/train, data/npy/val) are the outputs of
# scripts/preprocessing.sh. Extra arguments are passed on to main.py, e.g.
#   bash scripts/train_VQVAE.sh lightning.trainer.devices=2 data.params.batch_size=4
# Resume a run with: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/autoencoder/VQGAN.yaml}
exec "$PYTHON" main.py --base "$CONFIG" -t --name vqgan "$@"
