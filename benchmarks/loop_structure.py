"""How to run the training steps: per-step `jit` or `lax.scan` over the steps,
each with the batch gradient taken whole or in micro-batches differentiated side by side.

    python benchmarks/loop_structure.py [--steps 40] [--repeats 3] [--models conv_vae dense_ae]
                                        [--loops step scan] [--micro_batches 1 2 4] [--out FILE]
    python benchmarks/loop_structure.py --smoke     # seconds: dense_ae, 2 steps, one repeat, step and scan

Prints milliseconds per training step (median of repeats, compile excluded) for the seed models at
their seed batch sizes: the numbers behind vaejax.devices.MEASURED_FASTER_LOOP and
MEASURED_FASTER_MICRO_BATCHES (what `--loop auto` and `--micro_batches auto` pick), on the
machine it runs on; with `--out`, also as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402
from vaejax.config import LOOPS, MODEL_DEFAULTS  # noqa: E402
from vaejax.data import load_bundled_mnist  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.keys import seed_keys  # noqa: E402
from vaejax.models import build_model  # noqa: E402
from vaejax.steps import LossSpec, init_state, make_epoch_scan, make_loss, make_train_step, micro_batched  # noqa: E402

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
    step_fn = make_train_step(micro_batched(make_loss(model, LossSpec()), micro_batches), optimizer,
                              settings["batch_size"])
    order = jax.random.permutation(keys.train, images.shape[0])
    if loop == "step":
        per_step = jax.jit(step_fn)

        def run():
            current = state
            for _ in range(steps):
                current = per_step(current, images, labels, order, keys.train)
            return current.sums
    else:
        scanned = jax.jit(make_epoch_scan(step_fn, steps))

        def run():
            return scanned(state, images, labels, order, keys.train).sums
    return 1e3 * time_call(run, repeats) / steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["conv_vae", "dense_ae"], choices=sorted(MODEL_DEFAULTS))
    parser.add_argument("--loops", nargs="+", default=["step", "scan"],
                        choices=[loop for loop in LOOPS if loop != "auto"])
    parser.add_argument("--micro_batches", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # dense_ae alone: conv_vae's scan ran seconds a step on the 2-core CPU (2.5 minutes in all)
    args = smoke.parse_args(parser, argv, {"steps": 2, "repeats": 1, "models": ["dense_ae"],
                                           "loops": ["step", "scan"], "micro_batches": [1, 2]})
    mnist = load_bundled_mnist()
    images, labels = jax.device_put((mnist.train_images, mnist.train_labels))
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"{'model':10s} {'batch':>5s} {'micro-batches':>13s} " + " ".join(f"{loop + ' ms':>16s}"
                                                                          for loop in args.loops))
    rows = []
    for model_name in args.models:
        batch = MODEL_DEFAULTS[model_name]["batch_size"]
        for micro_batches in args.micro_batches:
            times = [ms_per_step(model_name, loop, micro_batches, args.steps, args.repeats, images, labels)
                     for loop in args.loops]
            rows.append({"model": model_name, "batch_size": batch, "micro_batches": micro_batches,
                         "ms_per_step": dict(zip(args.loops, times, strict=True))})
            print(f"{model_name:10s} {batch:5d} {micro_batches:13d} " + " ".join(f"{ms:16.2f}" for ms in times),
                  flush=True)
    out = smoke.out_path(args, None, "loop_structure.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_result(out, {"backend": jax.default_backend(), "steps": args.steps, "repeats": args.repeats,
                           "rows": rows, "provenance": provenance(__file__, argv)})
        print(f"written to {out}")


if __name__ == "__main__":
    main()
