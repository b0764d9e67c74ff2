#!/usr/bin/env bash
# Issue 5's GPU measurements in one call on a lent GPU machine (its python3 has JAX, Flax, Optax and
# PyTorch with CUDA): speed against PyTorch eager, the loop and micro-batch choices, and bitwise
# repeatability with and without --deterministic. Run from the repository root:
#     bash benchmarks/gpu_session.sh            # results under $OUT (device tool) or benchmarks/results
# Not yet run on a GPU: no GPU was lent to the sessions that wrote it.
set -uo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__)" | tee -a "$out/gpu.txt"
python3 benchmarks/train_speed.py --out "$out/train_speed-gpu.json" 2>&1 | tee "$out/train_speed-gpu.txt"
python3 benchmarks/loop_structure.py --steps 100 --micro_batches 1 2 2>&1 | tee "$out/loop_structure-gpu.txt"
python3 benchmarks/determinism.py --model conv_vae --epochs 3 --out "$out/determinism-gpu.json" 2>&1 \
    | tee "$out/determinism-gpu.txt"
