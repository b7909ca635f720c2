#!/usr/bin/env bash
# Regenerate docs/figures: train the three runs of docs/figures.md and draw every figure with `pyro-vae plot`.
# Usage: bash docs/make_figures.sh [DATA_ROOT]   (default: ../shared/data; a few minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUNS="$(mktemp -d)"
export MPLBACKEND=Agg
pyro-vae train --dataset digits --out "$RUNS/digits" --no-progress
pyro-vae train --dataset mnist --data-root "$DATA" --epochs 10 --out "$RUNS/mnist" --no-progress
pyro-vae train --dataset mnist --data-root "$DATA" --epochs 5 --latent-dim 2 --hidden-dims 500,500 \
    --out "$RUNS/mnist-2d" --no-progress
for run in digits mnist mnist-2d; do
    pyro-vae plot "$RUNS/$run" --out "docs/figures/$run"
done
echo "runs in $RUNS; figures in docs/figures"
