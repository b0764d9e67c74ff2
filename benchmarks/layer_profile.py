"""Where a conv_vae training step spends its time: each layer's forward, input gradient and weight
gradient, in XLA (vaejax) and in PyTorch, on the same shapes in the same run.

    python benchmarks/layer_profile.py [--batch 128] [--repeats 20] [--out FILE]
    taskset -c 0 python benchmarks/layer_profile.py     # one core for both
    python benchmarks/layer_profile.py --smoke          # seconds: batch 4, one call per window

Each layer of the seed 000 model at batch 128, each side as the models call it (XLA pads inside the
convolution, as Flax does; PyTorch convolves an input padded beforehand, as the peer does), timed
alone: milliseconds per call (median of 5 windows of `--repeats` calls), then the sum over a step
(the decoder's 64-channel transposed convolution occurs twice; the first layer's input gradient is
not needed in training).
PyTorch's backward pieces are aten.convolution_backward with only the input or only the weight
requested. Both use every core the process may run on.
Needs `pip install torch` (`--smoke` without it times the XLA side alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402

use_deterministic_kernels()  # measured as train.py runs vaejax: its kernel settings, before the backend starts

# (name, input (B excluded) NHWC, TF SAME padding (before, after), kernel (kh, kw, in, out), stride, times per step)
CONV_LAYERS = [
    ("encoder conv 1: 28x28x1 -> 14x14x64, stride 2", (28, 28, 1), (1, 1), (4, 4, 1, 64), 2, 1),
    ("encoder conv 2: 14x14x64 -> 7x7x64, stride 2", (14, 14, 64), (1, 1), (4, 4, 64, 64), 2, 1),
    ("encoder conv 3: 7x7x64 -> 7x7x64", (7, 7, 64), (1, 2), (4, 4, 64, 64), 1, 1),
    ("decoder conv 1: 7x7x1 -> 7x7x64", (7, 7, 1), (2, 1), (4, 4, 1, 64), 1, 1),
    ("decoder convs 2, 3: 7x7x64 -> 7x7x64", (7, 7, 64), (2, 1), (4, 4, 64, 64), 1, 2),
]
DENSE_LAYERS = [("decoder dense 3136 -> 784", 3136, 784, 1), ("decoder dense 784 -> 784", 784, 784, 1)]
PARTS = ("forward", "input grad", "weight grad")


def median_ms(call, repeats: int) -> float:
    call()
    call()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        times.append((time.perf_counter() - started) / repeats)
    return 1e3 * statistics.median(times)


def jax_conv(stride: int, pad: tuple[int, int]):
    """The convolution as Flax's nn.Conv/ConvTranspose call it: padding inside the operation."""
    return lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), (pad, pad),
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))


def jax_parts(function, x, w, repeats: int) -> list[float]:
    """Forward, input gradient, weight gradient of `function(x, w)`, each compiled alone."""
    out = function(x, w)
    cotangent = jnp.ones_like(out)
    calls = [jax.jit(function),
             jax.jit(lambda x, w, d: jax.vjp(function, x, w)[1](d)[0]),
             jax.jit(lambda x, w, d: jax.vjp(function, x, w)[1](d)[1])]
    args = [(x, w), (x, w, cotangent), (x, w, cotangent)]
    return [median_ms(lambda call=call, a=a: jax.block_until_ready(call(*a)), repeats)
            for call, a in zip(calls, args, strict=True)]


def torch_conv_parts(x, w, stride: int, repeats: int) -> list[float]:
    import torch

    conv = torch.ops.aten.convolution_backward
    out = torch.nn.functional.conv2d(x, w, stride=stride)
    cotangent = torch.ones_like(out)

    def backward(mask):
        return lambda: conv(cotangent, x, w, None, [stride, stride], [0, 0], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        return [median_ms(lambda: torch.nn.functional.conv2d(x, w, stride=stride), repeats),
                median_ms(backward([True, False, False]), repeats),
                median_ms(backward([False, True, False]), repeats)]


def torch_dense_parts(x, w, repeats: int) -> list[float]:
    import torch

    cotangent = torch.ones(x.shape[0], w.shape[0])
    with torch.no_grad():
        return [median_ms(lambda: torch.nn.functional.linear(x, w), repeats),
                median_ms(lambda: cotangent @ w, repeats),
                median_ms(lambda: cotangent.T @ x, repeats)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/"
                                                    "layer_profile-<backend>-<cores>cores.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"batch": 4, "repeats": 1})
    try:
        import torch
    except ModuleNotFoundError:
        if not args.smoke:
            parser.error("needs PyTorch (pip install torch); --smoke times the XLA side alone without it")
        torch = None
        print("layer_profile.py: the PyTorch side is skipped: torch is not installed")
    cores = len(os.sched_getaffinity(0))
    if torch is not None:
        torch.set_num_threads(cores)
    rng = np.random.default_rng(0)
    rows = []
    for name, shape, pad, kernel, stride, count in CONV_LAYERS:
        x = rng.standard_normal((args.batch, *shape), dtype=np.float32)
        w = rng.standard_normal(kernel, dtype=np.float32)
        ours = jax_parts(jax_conv(stride, pad), jnp.asarray(x), jnp.asarray(w), args.repeats)
        padded = np.pad(x, ((0, 0), pad, pad, (0, 0)))  # the PyTorch peer pads first too (F.pad)
        theirs = None if torch is None else torch_conv_parts(torch.from_numpy(padded.transpose(0, 3, 1, 2).copy()),
                                                             torch.from_numpy(w.transpose(3, 2, 0, 1).copy()),
                                                             stride, args.repeats)
        rows.append({"layer": name, "per_step": count, "xla_ms": ours, "torch_ms": theirs})
    for name, inputs, outputs, count in DENSE_LAYERS:
        x = rng.standard_normal((args.batch, inputs), dtype=np.float32)
        w = rng.standard_normal((inputs, outputs), dtype=np.float32)
        ours = jax_parts(jnp.dot, jnp.asarray(x), jnp.asarray(w), args.repeats)
        theirs = None if torch is None else torch_dense_parts(torch.from_numpy(x), torch.from_numpy(w.T.copy()),
                                                              args.repeats)
        rows.append({"layer": name, "per_step": count, "xla_ms": ours, "torch_ms": theirs})

    peer = "no PyTorch" if torch is None else f"PyTorch {torch.__version__} with {torch.get_num_threads()} threads"
    print(f"JAX {jax.__version__} ({jax.default_backend()}) vs {peer}; {cores} cores; batch {args.batch}; "
          "ms per call, XLA / PyTorch")
    print(f"{'layer':48s} " + " ".join(f"{part:>19s}" for part in PARTS))
    totals = np.zeros((2, 3))
    for row in rows:
        label = row["layer"] + (" (x2)" if row["per_step"] == 2 else "")
        theirs = row["torch_ms"] or [np.nan] * len(PARTS)
        print(f"{label:48s} " + " ".join(f"{ours:8.2f} / {peer_ms:8.2f}"
                                         for ours, peer_ms in zip(row["xla_ms"], theirs, strict=True)))
        needed = np.array([1, row["layer"] != CONV_LAYERS[0][0], 1])  # no gradient for the images
        totals += row["per_step"] * needed * np.array([row["xla_ms"], theirs])
    print(f"{'sum over a step':48s} " + " ".join(f"{ours:8.2f} / {theirs:8.2f}" for ours, theirs in totals.T))
    result = {"jax": jax.__version__, "torch": None if torch is None else torch.__version__,
              "peer": "skipped: torch not installed" if torch is None else "torch",
              "threads": None if torch is None else torch.get_num_threads(), "cores": cores, "batch": args.batch,
              "parts": PARTS, "layers": rows, "step_sum_xla_ms": totals[0].tolist(),
              "step_sum_torch_ms": None if torch is None else totals[1].tolist(),
              "provenance": provenance(__file__, argv)}
    out = smoke.out_path(args, f"benchmarks/results/layer_profile-{jax.default_backend()}-{cores}cores.json",
                         "layer_profile.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
