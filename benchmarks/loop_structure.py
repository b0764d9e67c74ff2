"""How to run the training steps: per-step `jit` or `lax.scan` over the steps (plain and unrolled),
each with the batch gradient taken whole or in micro-batches differentiated side by side.

    python benchmarks/loop_structure.py [--steps 40] [--repeats 3] [--models conv_vae dense_ae]
                                        [--loops step scan unrolled] [--micro_batches 1 2 4]

Prints milliseconds per training step (median of repeats, compile excluded) for the seed models at
their seed batch sizes: the numbers behind vaejax.devices.MEASURED_FASTER_LOOP and
MEASURED_FASTER_MICRO_BATCHES (what `--loop auto` and `--micro_batches auto` pick), on the
machine it runs on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

from vaejax.config import LOOPS, MODEL_DEFAULTS
from vaejax.data import load_bundled_mnist
from vaejax.devices import use_deterministic_kernels
from vaejax.models import build_model
from vaejax.steps import SCAN_UNROLL, init_state, make_epoch_scan, make_train_step, seed_keys

use_deterministic_kernels()  # vaejax is timed as train.py runs it (before the backend starts)


def time_call(run, repeats: int) -> float:
    jax.block_until_ready(run())  # compile and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ms_per_step(model_name: str, loop: str, micro_batches: int, steps: int, repeats: int,
                images: jax.Array, labels: jax.Array) -> float:
    settings = MODEL_DEFAULTS[model_name]
    model = build_model(model_name, latent_dim=2)
    optimizer = optax.adam(settings["learning_rate"])
    keys = seed_keys(0)
    state = init_state(model, optimizer, keys, steps)
    step_fn = make_train_step(model, optimizer, settings["batch_size"], micro_batches=micro_batches)
    order = jax.random.permutation(keys.train, images.shape[0])
    if loop == "step":
        per_step = jax.jit(step_fn)

        def run():
            current = state
            for _ in range(steps):
                current = per_step(current, images, labels, order, keys.train)
            return current.sums
    else:
        scanned = jax.jit(make_epoch_scan(step_fn, steps, SCAN_UNROLL if loop == "unrolled" else 1))

        def run():
            return scanned(state, images, labels, order, keys.train).sums
    return 1e3 * time_call(run, repeats) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["conv_vae", "dense_ae"], choices=sorted(MODEL_DEFAULTS))
    parser.add_argument("--loops", nargs="+", default=["step", "scan", "unrolled"],
                        choices=[loop for loop in LOOPS if loop != "auto"])
    parser.add_argument("--micro_batches", nargs="+", type=int, default=[1, 2, 4])
    args = parser.parse_args()
    mnist = load_bundled_mnist()
    images, labels = jax.device_put((mnist.train_images, mnist.train_labels))
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    loop_names = {"step": "step", "scan": "scan", "unrolled": f"unrolled x{SCAN_UNROLL}"}
    print(f"{'model':10s} {'batch':>5s} {'micro-batches':>13s} " + " ".join(f"{loop_names[loop] + ' ms':>16s}"
                                                                          for loop in args.loops))
    for model_name in args.models:
        batch = MODEL_DEFAULTS[model_name]["batch_size"]
        for micro_batches in args.micro_batches:
            times = [ms_per_step(model_name, loop, micro_batches, args.steps, args.repeats, images, labels)
                     for loop in args.loops]
            print(f"{model_name:10s} {batch:5d} {micro_batches:13d} " + " ".join(f"{ms:16.2f}" for ms in times),
                  flush=True)


if __name__ == "__main__":
    main()
