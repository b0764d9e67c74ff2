#!/usr/bin/env bash
# Every GPU measurement of the accelerators issue in one call on a lent GPU machine (its python3 has
# JAX with CUDA, Flax, Optax, PyTorch and pytest; no network): the test suite on the GPU, speed
# against PyTorch eager / torch.compile / CUDA graphs, the loop and micro-batch grid, bitwise
# repeatability with the default flags and the cost of --nondeterministic, and the main job's wall
# time with its split (training, evaluation, host work, compilations). Run from the repository root:
#     bash benchmarks/gpu_session.sh        # tables and JSON under $OUT (device tool) or benchmarks/results
# The GPU image lacks tensorboardX: carry its wheel in .whl/ (the device tool's README says how; here
# `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tensorboardX==2.6.5`),
# and the script installs it first. Without it, runs with TensorBoard on end in one clear line.
# About 6-8 minutes on an H100 (estimated: not yet run on a GPU; no GPU was lent to the sessions that wrote it).
set -uo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PWD:/tmp/site
fi
step() { echo "== $1 ($(date +%T))" | tee -a "$out/gpu_session.log"; }
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, jaxlib, flax, optax, torch; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__,
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)" | tee -a "$out/gpu.txt"
step "test suite on the GPU"
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 300 python3 -m pytest -q --no-header -p no:cacheprovider $parallel 2>&1 | tail -40 > "$out/pytest-gpu.txt"
tail -3 "$out/pytest-gpu.txt"
step "main job: python train.py --latent_dim 2 (every output), wall and split"
/usr/bin/time -v python3 train.py --latent_dim 2 --workdir "$out/main-job" > "$out/main-job.txt" 2> "$out/main-job.time"
tail -4 "$out/main-job.txt"; grep -E "Elapsed|Maximum resident" "$out/main-job.time"
step "main job split and compilations (3 epochs, every output vs none)"
python3 benchmarks/main_job.py --limit 0 --out "$out/main_job-gpu.json" 2>&1 | tee "$out/main_job-gpu.txt"
step "speed against PyTorch (eager, torch.compile, CUDA graphs; a whole epoch per window)"
python3 benchmarks/train_speed.py --out "$out/train_speed-gpu.json" 2>&1 | tee "$out/train_speed-gpu.txt"
step "loop structure"
python3 benchmarks/loop_structure.py --steps 100 --micro_batches 1 2 2>&1 | tee "$out/loop_structure-gpu.txt"
step "bitwise repeatability and the cost of deterministic kernels"
python3 benchmarks/determinism.py --model conv_vae --epochs 3 --out "$out/determinism-gpu.json" 2>&1 \
    | tee "$out/determinism-gpu.txt"
step "done"
