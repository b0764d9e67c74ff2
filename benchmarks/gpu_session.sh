#!/usr/bin/env bash
# Every GPU measurement of the accelerators issue in one call on a lent GPU machine (its python3 has
# JAX with CUDA, Flax, Optax, PyTorch and pytest; no network): the main job's wall time, bitwise
# repeatability with the default flags and the cost of --nondeterministic, the main job's split
# (training, evaluation, host work, compilations), speed against PyTorch eager / torch.compile /
# CUDA graphs, the loop and micro-batch grid, and the test suite on the GPU. Run from the repository root:
#     bash benchmarks/gpu_session.sh        # tables and JSON under $OUT (device tool) or benchmarks/results
# The GPU image lacks tensorboardX: carry its wheel in .whl/ (the device tool's README says how; here
# `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tensorboardX==2.6.5`).
# The steps share one 570-second budget, most important first; a step that would overrun is cut
# (its partial output is kept). Not yet run on a GPU: no GPU was lent to the sessions that wrote it.
# A dry run on any machine checks, in seconds, that every command below would parse, running none:
#     bash benchmarks/gpu_session.sh --dry-run      # or DRY_RUN=1; exit 1 if one would not parse
# It puts a `python3` first on PATH that hands its arguments to benchmarks/parse_only.py (which
# parses a benchmark's or train.py's flags, compiles `-c` code, skips pytest and pip) and an
# `nvidia-smi` that only says it is skipped; its logs go to a temporary folder (or $OUT).
set -uo pipefail
dry_run=${DRY_RUN:-}
[ "${1:-}" = "--dry-run" ] && dry_run=1
if [ -n "$dry_run" ]; then
    shims=$(mktemp -d)
    trap 'rm -rf "$shims"' EXIT
    printf '#!/bin/sh\nexec "%s" "%s/benchmarks/parse_only.py" "$@"\n' "${PYTHON:-$(command -v python3)}" "$PWD" \
        > "$shims/python3"
    printf '#!/bin/sh\necho "dry run: nvidia-smi: skipped"\n' > "$shims/nvidia-smi"
    chmod +x "$shims/python3" "$shims/nvidia-smi"
    export PATH="$shims:$PATH" PARSE_ONLY_FAILURES="$shims/failures"
    out=${OUT:-$shims/out}
else
    out=${OUT:-benchmarks/results}
fi
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PWD:/tmp/site
fi
python3 -c "import tensorboardX" 2>/dev/null \
    || { echo "gpu_session.sh: tensorboardX is missing: carry its wheel in .whl/ (see the header)"; exit 2; }
end=$((SECONDS + 570))
step() { echo "== $1 ($(date +%T), $((end - SECONDS)) s left)" | tee -a "$out/gpu_session.log"; }
left() { echo $((end - SECONDS > 10 ? end - SECONDS : 10)); }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, jaxlib, flax, optax, torch; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__,
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)" | tee -a "$out/gpu.txt"

step "main job: python train.py --latent_dim 2, every output, default flags, twice"
for run in a b; do
    started=$(date +%s.%N)
    timeout "$(left)" python3 train.py --latent_dim 2 --workdir "/tmp/main-$run" > "$out/main-job-$run.txt" 2>&1
    echo "run $run: exit $?, wall $(python3 -c "import time; print(round(time.time() - $started, 1))") s" \
        | tee -a "$out/main-job.txt"
    tail -3 "$out/main-job-$run.txt"
    cp "/tmp/main-$run/metrics.jsonl" "$out/main-job-$run-metrics.jsonl" 2>/dev/null
done
cp /tmp/main-a/config.json "$out/main-job-config.json" 2>/dev/null
sha256sum /tmp/main-a/params.msgpack /tmp/main-b/params.msgpack 2>&1 | tee -a "$out/main-job.txt"

step "bitwise repeatability and the cost of deterministic kernels"
timeout "$(left)" python3 benchmarks/determinism.py --model conv_vae --epochs 3 --out "$out/determinism-gpu.json" \
    2>&1 | tee "$out/determinism-gpu.txt"

step "speed against PyTorch (eager, torch.compile, CUDA graphs; a whole epoch per window)"
timeout "$(left)" python3 benchmarks/train_speed.py --repeats 3 --out "$out/train_speed-gpu.json" 2>&1 \
    | tee "$out/train_speed-gpu.txt"

step "main job split and compilations (3 full epochs, every output vs none)"
timeout "$(left)" python3 benchmarks/main_job.py --limit 0 --out "$out/main_job-gpu.json" 2>&1 \
    | tee "$out/main_job-gpu.txt"

step "loop structure"
timeout "$(left)" python3 benchmarks/loop_structure.py --steps 100 --micro_batches 1 2 \
    --out "$out/loop_structure-gpu.json" 2>&1 | tee "$out/loop_structure-gpu.txt"

step "cost per epoch of each training objective (mlp_vae, all 60,000 images; at most 100 s)"
timeout "$(( $(left) < 100 ? $(left) : 100 ))" python3 benchmarks/iwae_table.py --cost --limit 60000 \
    --runs /tmp/iwae --out "$out/iwae_cost-gpu.json" 2>&1 | tail -9 | tee "$out/iwae_cost-gpu.txt"

step "test suite on the GPU"
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout "$(left)" python3 -m pytest -q --no-header -p no:cacheprovider $parallel 2>&1 | tail -40 > "$out/pytest-gpu.txt"
tail -3 "$out/pytest-gpu.txt"
step "done"
if [ -n "$dry_run" ]; then
    if [ -s "$PARSE_ONLY_FAILURES" ]; then
        echo "dry run: these commands would not parse:"
        cat "$PARSE_ONLY_FAILURES"
        exit 1
    fi
    echo "dry run: every command parses"
fi
