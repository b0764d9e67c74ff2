"""Per-step `jit` (one dispatch per step) against `lax.scan` over the steps, plain and unrolled.

    python benchmarks/loop_structure.py [--steps 40] [--repeats 3]

Prints milliseconds per training step (median of repeats, compile excluded) for both seed models
at their seed batch sizes, for the three loops of `--loop`: the numbers behind
vaejax.training.MEASURED_FASTER_LOOP (what `--loop auto` picks), on the machine it runs on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

from vaejax.config import MODEL_DEFAULTS
from vaejax.data import load_bundled_mnist
from vaejax.models import build_model
from vaejax.training import SCAN_UNROLL, init_state, make_epoch_scan, make_train_step, seed_keys


def time_call(run, repeats: int) -> float:
    jax.block_until_ready(run())  # compile and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model_name: str, steps: int, repeats: int, images: jax.Array, labels: jax.Array) -> dict[str, float]:
    settings = MODEL_DEFAULTS[model_name]
    model = build_model(model_name, latent_dim=2)
    optimizer = optax.adam(settings["learning_rate"])
    keys = seed_keys(0)
    state = init_state(model, optimizer, keys, steps)
    step_fn = make_train_step(model, optimizer, settings["batch_size"])
    order = jax.random.permutation(keys.train, images.shape[0])

    per_step = jax.jit(step_fn)

    def run_per_step():
        current = state
        for _ in range(steps):
            current = per_step(current, images, labels, order, keys.train)
        return current.sums

    seconds = {"step": time_call(run_per_step, repeats)}
    for loop, unroll in (("scan", 1), ("unrolled", SCAN_UNROLL)):
        scanned = jax.jit(make_epoch_scan(step_fn, steps, unroll))
        seconds[loop] = time_call(lambda run=scanned: run(state, images, labels, order, keys.train).sums, repeats)
    return {loop: total / steps for loop, total in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mnist = load_bundled_mnist()
    images, labels = jax.device_put((mnist.train_images, mnist.train_labels))
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"{'model':10s} {'batch':>5s} {'step ms':>10s} {'scan ms':>10s} {f'unrolled x{SCAN_UNROLL} ms':>16s}")
    for model_name in ("conv_vae", "dense_ae"):
        seconds = measure(model_name, args.steps, args.repeats, images, labels)
        ms = {loop: 1e3 * value for loop, value in seconds.items()}
        batch = MODEL_DEFAULTS[model_name]["batch_size"]
        print(f"{model_name:10s} {batch:5d} {ms['step']:10.2f} {ms['scan']:10.2f} {ms['unrolled']:16.2f}")


if __name__ == "__main__":
    main()
