"""Training speed of vaejax against PyTorch peers of the same models, measured in the same run.

    python benchmarks/train_speed.py [--models conv_vae dense_ae] [--peers eager compile cudagraphs]
                                     [--repeats 5] [--steps N] [--out FILE]
    python benchmarks/train_speed.py --smoke     # seconds: 2 steps a window; without torch, vaejax alone

For each seed model at its seed batch size: milliseconds per training step (median over repeats
of a window of steps, compile excluded), images per second, the implied time of a full MNIST
epoch, compile time, and the ratio vaejax / peer (below 1: vaejax is faster). vaejax runs its real
Trainer with `--loop auto --micro_batches auto`. PyTorch runs the same layers, loss, Adam and uint8
data gathered by index, on the GPU when PyTorch sees one, as up to three peers:

    eager       plain PyTorch
    compile     torch.compile of forward and loss (AOTAutograd compiles the backward with it)
    cudagraphs  the same with mode="reduce-overhead": CUDA graphs replay forward and backward (CUDA only)

By default all three on CUDA and eager alone on CPU, where torch.compile takes minutes on 2 cores.
The compiled peers compile what a strong user compiles: the model and its loss; the optimizer
stays out of the graph as fused Adam (one multi-tensor kernel) on CUDA, as nanoGPT does, and
PyTorch's default Adam on CPU. The window is a few hundred milliseconds of steps on CPU and a whole
MNIST epoch on an accelerator, whose last batch is short (60000 = 468 x 128 + 96 for conv_vae):
where vaejax pads it to full size with zero-weight rows, the peers train it at its own size, and
the compiled ones compile it with `dynamic=False` as a second static graph (recorded as a second
CUDA graph) during the warm-up, so the timed windows never recompile. Each peer warms up for two
windows (a CUDA graph is recorded on a shape's second call) before the timed ones. First it checks
that vaejax and PyTorch compute the same function (parameter count; loss on the same weights and
inputs). Needs `pip install torch` (CPU build: torch==2.13.0); `--smoke` without it times vaejax alone.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

try:  # optional under --smoke, which then times vaejax alone
    import torch
except ModuleNotFoundError:
    torch = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402
from benchmarks.step_timing import time_vaejax  # noqa: E402
from vaejax.batching import num_batches  # noqa: E402
from vaejax.config import MODEL_DEFAULTS  # noqa: E402
from vaejax.data import load_bundled_mnist  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.losses import loss_terms  # noqa: E402
from vaejax.models import build_model, count_params, images_to_float, init_params  # noqa: E402

if torch is not None:
    from benchmarks.peers import torch_autoencoders as peer

use_deterministic_kernels()  # vaejax is timed as train.py runs it (before the backend starts)

CPU_WINDOW_STEPS = {"conv_vae": 20, "dense_ae": 400}  # steps timed per repeat on CPU: a second or more


def same_function(name: str, images: np.ndarray) -> dict:
    """Parameter counts of both, and their losses on the same weights, inputs and noise."""
    model = build_model(name, 2)
    params = init_params(model, jax.random.key(1))
    torch_model = peer.build(name)
    peer.load_flax_params(torch_model, params)
    batch = images[:32]
    eps = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    floats = images_to_float(batch)
    mean, std = model.apply({"params": params}, floats, method=model.encode)
    z = mean if std is None else mean + std * eps
    logits = model.apply({"params": params}, z, method=model.decode)
    ours = float(loss_terms(logits, floats.reshape(32, -1), mean, std, jnp.ones(32))["loss"])
    with torch.no_grad():
        tensor = torch.from_numpy(np.array(floats)).permute(0, 3, 1, 2)
        theirs = float(peer.loss_terms(*_reorder(torch_model(tensor, torch.from_numpy(eps)), tensor))[0])
    return {"params_vaejax": count_params(params), "params_torch": sum(p.numel() for p in torch_model.parameters()),
            "loss_vaejax": ours, "loss_torch": theirs, "loss_relative_difference": abs(ours - theirs) / abs(theirs)}


def _reorder(outputs, images):
    logits, mean, std = outputs
    return logits, images, mean, std


PEERS = ("eager", "compile", "cudagraphs")
WARMUP_WINDOWS = 2  # a CUDA graph is recorded on its shape's second call: the short last batch's in window 2


def torch_device() -> torch.device:
    """PyTorch's GPU when it sees one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_peers(device: torch.device) -> list[str]:
    """Every peer on CUDA; eager alone elsewhere (torch.compile takes minutes on the 2-core CPU)."""
    return list(PEERS) if device.type == "cuda" else ["eager"]


def torch_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, peer_name: str) -> Callable:
    """One PyTorch training step whose forward and loss run eager, compiled, or compiled into CUDA graphs."""

    def forward_loss(pixels, eps):
        logits, mean, std = model(pixels, eps)
        return peer.loss_terms(logits, pixels, mean, std)[0]

    if peer_name != "eager":
        torch.compiler.reset()  # a fresh start: no graphs or CUDA graph pools left by an earlier peer
        # Static shapes: a short last batch gets a graph of its own rather than a slower dynamic one for all.
        forward_loss = torch.compile(forward_loss, dynamic=False,
                                     mode="reduce-overhead" if peer_name == "cudagraphs" else "default")

    def step(pixels, eps):
        if peer_name == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are dead from here on
        optimizer.zero_grad(set_to_none=True)
        forward_loss(pixels, eps).backward()
        optimizer.step()

    return step


def time_torch(name: str, images: np.ndarray, steps: int, repeats: int, peer_name: str) -> dict:
    """One PyTorch peer training on its GPU when it has one (the peer of a GPU run), else on the CPU."""
    device = torch_device()
    settings = MODEL_DEFAULTS[name]
    batch = settings["batch_size"]
    torch.manual_seed(0)
    model = peer.build(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"], fused=device.type == "cuda")
    data = torch.from_numpy(images[: steps * batch].copy()).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    step = torch_step(model, optimizer, peer_name)

    def window():
        order = torch.randperm(len(data), generator=generator, device=device)
        for start in range(0, len(data), batch):  # `steps` batches; a whole epoch's last one is short
            pixels = data[order[start:start + batch]].unsqueeze(1).float() / 255.0
            step(pixels, torch.randn(len(pixels), 2, generator=generator, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: the window ends when it is done

    started = time.perf_counter()
    for _ in range(WARMUP_WINDOWS):  # compile, CUDA graph recording, allocator
        window()
    warmup = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        window()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"ms_per_step": 1e3 * seconds / steps, "compile_s": warmup - WARMUP_WINDOWS * seconds,
            "repeats": repeats, "repeats_ms_per_step": [1e3 * t / steps for t in times]}


def torch_setup(device: torch.device, peers: list[str]) -> dict:
    """What the PyTorch side ran on, for the results."""
    return {"version": torch.__version__, "threads": torch.get_num_threads(), "peers": peers,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "adam": "fused" if device.type == "cuda" else "default"}


def with_throughput(timing: dict, batch: int, epoch_steps: int) -> dict:
    """A timing plus the images per second and the full-epoch seconds its step time implies."""
    return timing | {"images_per_s": 1e3 * batch / timing["ms_per_step"],
                     "epoch_s": epoch_steps * timing["ms_per_step"] / 1e3}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["conv_vae", "dense_ae"])
    parser.add_argument("--peers", nargs="+", choices=PEERS,
                        help="PyTorch peers (default: all on CUDA, eager on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed window (default: a whole epoch on an accelerator, on CPU "
                             + ", ".join(f"{name} {steps}" for name, steps in CPU_WINDOW_STEPS.items()) + ")")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/train_speed-<backend>.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"steps": 2, "repeats": 1})
    if torch is None and not args.smoke:
        parser.error("needs PyTorch (pip install torch); --smoke times vaejax alone without it")
    if torch is None:
        print("train_speed.py: the PyTorch side is skipped: torch is not installed")
        torch_on, peers = None, []
    else:
        torch_on = torch_device()
        peers = args.peers or default_peers(torch_on)
    if "cudagraphs" in peers and torch_on.type != "cuda":
        parser.error("--peers cudagraphs needs a CUDA GPU")
    mnist = load_bundled_mnist()
    device = jax.devices()[0]
    results = {"backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
               "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
               "peer": "torch" if torch is not None else "skipped: torch not installed",
               "torch": None if torch is None else torch_setup(torch_on, peers), "models": {}}
    for name in args.models:
        batch = MODEL_DEFAULTS[name]["batch_size"]
        epoch_steps = num_batches(len(mnist.train_images), batch)
        steps = args.steps or (CPU_WINDOW_STEPS[name] if results["backend"] == "cpu" else epoch_steps)
        ours = with_throughput(time_vaejax(name, mnist, steps, args.repeats), batch, epoch_steps)
        theirs = {peer_name: with_throughput(time_torch(name, mnist.train_images, steps, args.repeats, peer_name),
                                             batch, epoch_steps) for peer_name in peers}
        results["models"][name] = {
            "batch_size": batch, "window_steps": steps,
            "same_function": None if torch is None else same_function(name, mnist.test_images),
            "vaejax": ours, "torch": theirs,
            "ratio_vaejax_over_torch": {peer_name: ours["ms_per_step"] / timing["ms_per_step"]
                                        for peer_name, timing in theirs.items()},
        }
    results["provenance"] = provenance(__file__, argv)
    out = smoke.out_path(args, f"benchmarks/results/train_speed-{results['backend']}.json", "train_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results)
    print_table(results)
    print(f"written to {out}")


def print_table(results: dict) -> None:
    setup = results["torch"]
    print(f"backend {results['backend']} ({results['device']}), JAX {results['jax']}; "
          + ("no PyTorch" if setup is None else f"PyTorch {setup['version']} on {setup['device']} with "
                                                f"{setup['threads']} threads, {setup['adam']} Adam"))
    print(f"{'model':9s} {'batch':>5s} {'loop':>8s} {'peer':>10s} {'vaejax ms':>10s} {'peer ms':>9s} {'ratio':>6s} "
          f"{'vaejax img/s':>12s} {'peer img/s':>11s} {'epoch s':>15s} {'compile s':>15s} {'same loss':>9s}")
    for name, row in results["models"].items():
        ours, check = row["vaejax"], row["same_function"]
        loop = ours["loop"] + (f" x{ours['micro_batches']}" if ours["micro_batches"] > 1 else "")
        if not row["torch"]:
            print(f"{name:9s} {row['batch_size']:5d} {loop:>8s} {'-':>10s} {ours['ms_per_step']:10.2f} "
                  f"{'':9s} {'':6s} {ours['images_per_s']:12.0f} {'':11s} {ours['epoch_s']:7.1f}{'':8s} "
                  f"{ours['compile_s']:7.2f}")
        for peer_name, theirs in row["torch"].items():
            print(f"{name:9s} {row['batch_size']:5d} {loop:>8s} {peer_name:>10s} {ours['ms_per_step']:10.2f} "
                  f"{theirs['ms_per_step']:9.2f} {row['ratio_vaejax_over_torch'][peer_name]:6.2f} "
                  f"{ours['images_per_s']:12.0f} {theirs['images_per_s']:11.0f} "
                  f"{ours['epoch_s']:7.1f}/{theirs['epoch_s']:<7.1f} "
                  f"{ours['compile_s']:7.2f}/{theirs['compile_s']:<7.2f} "
                  f"{check['loss_relative_difference']:9.1e}")


if __name__ == "__main__":
    main()
