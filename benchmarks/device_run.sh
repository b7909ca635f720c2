#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent GPU machine (its CPU cores serve the threads benchmark):
# the CUDA tests, the training benchmark on cuda, and training speed against the thread count on many cores.
# Figures go to docs/benchmarks.md (each script's own section) and, with everything printed, to $OUT.
# Run from the repository root with the data in data-gpu/ (or $PYRO_VAE_DATA) and, where pyro-ppl and arviz are
# not installed, their wheels in .whl/.
set -o pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYRO_VAE_DATA="${PYRO_VAE_DATA:-$PWD/data-gpu}" MPLBACKEND=Agg
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; nproc; python3 -c "import torch, pyro; print(torch.__version__, pyro.__version__, torch.cuda.is_available())"; } \
  2>&1 | tee "$OUT/machine.txt"
timeout "${CUDA_TESTS_S:-170}" python3 -m pytest -q -p no:cacheprovider -m cuda -o addopts="" 2>&1 | tee "$OUT/cuda_tests.txt" | tail -15
timeout "${TRAIN_S:-100}" python3 benchmarks/train_mnist.py --device cuda --batch-size 100,1000 --train-size 20000 \
  --epochs 3 --threads 1 --write-docs 2>&1 | tee "$OUT/train_mnist_cuda.txt" | tail -12
timeout "${THREADS_S:-200}" python3 benchmarks/threads.py --train-size 5000 --settle 10 --timeout 40 --write-docs 2>&1 \
  | tee "$OUT/threads.txt" | tail -12
cp docs/benchmarks.md "$OUT/benchmarks.md"
