"""Training speed of vaejax against a PyTorch peer of the same models, measured in the same run.

    python benchmarks/train_speed.py [--models conv_vae dense_ae] [--repeats 5] [--out FILE]

For each seed model at its seed batch size: milliseconds per training step (median over repeats
of a window of steps, compile excluded), images per second, the implied time of a full MNIST
epoch, vaejax's compile time, and the ratio vaejax / PyTorch (below 1: vaejax is faster). vaejax
runs its real Trainer with `--loop auto --micro_batches auto`; PyTorch runs eager with the same
layers, loss, Adam and uint8 data gathered by index, on the GPU when PyTorch sees one. The window
is a few hundred milliseconds of steps on CPU and a whole MNIST epoch on an accelerator. First it
checks that both compute the same function (parameter count; loss on the same weights and
inputs). Needs `pip install torch` (CPU build: torch==2.13.0).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.peers import torch_autoencoders as peer  # noqa: E402
from vaejax.config import MODEL_DEFAULTS  # noqa: E402
from vaejax.data import Dataset, load_bundled_mnist  # noqa: E402
from vaejax.losses import loss_terms  # noqa: E402
from vaejax.models import build_model, count_params, images_to_float, init_params  # noqa: E402
from vaejax.training import Trainer, choose_loop, choose_micro_batches, init_state, num_batches, seed_keys, zero_sums  # noqa: E402

CPU_WINDOW_STEPS = {"conv_vae": 20, "dense_ae": 400}  # steps timed per repeat on CPU: a second or more


def same_function(name: str, images: np.ndarray) -> dict:
    """Parameter counts of both, and their losses on the same weights, inputs and noise."""
    import torch

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


def time_vaejax(name: str, dataset: Dataset, steps: int, repeats: int) -> dict:
    settings = MODEL_DEFAULTS[name]
    batch = settings["batch_size"]
    model = build_model(name, 2)
    optimizer = optax.adam(settings["learning_rate"])
    keys = seed_keys(0)
    loop = choose_loop("auto", name, jax.default_backend())
    micro_batches = choose_micro_batches(None, name, jax.default_backend(), jax.device_count())
    # A training set of exactly `steps` batches: one "epoch" is the timed window, in either loop.
    trainer = Trainer(model, optimizer, batch, dataset.limited(steps * batch), keys.eval, loop=loop,
                      micro_batches=micro_batches)
    state = init_state(model, optimizer, keys, trainer.steps)

    def window(state):
        state = trainer.train_epoch(state.replace(step=jnp.int32(0), sums=zero_sums(trainer.steps)))
        jax.block_until_ready(state.params)
        return state

    started = time.perf_counter()
    state = window(state)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        state = window(state)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"loop": loop, "micro_batches": micro_batches, "ms_per_step": 1e3 * seconds / steps,
            "compile_s": first - seconds, "repeats_ms_per_step": [1e3 * t / steps for t in times]}


def time_torch(name: str, images: np.ndarray, steps: int, repeats: int) -> dict:
    """PyTorch eager on its GPU when it has one (the peer of a GPU run), else on the CPU."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = MODEL_DEFAULTS[name]
    batch = settings["batch_size"]
    torch.manual_seed(0)
    model = peer.build(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    data = torch.from_numpy(images[: steps * batch].copy()).to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def window():
        order = torch.randperm(len(data), generator=generator, device=device)
        for step in range(steps):
            pixels = data[order[step * batch:(step + 1) * batch]].unsqueeze(1).float() / 255.0
            eps = torch.randn(batch, 2, generator=generator, device=device)
            logits, mean, std = model(pixels, eps)
            loss = peer.loss_terms(logits, pixels, mean, std)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: the window ends when it is done

    window()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        window()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"ms_per_step": 1e3 * seconds / steps, "threads": torch.get_num_threads(), "device": device_name,
            "version": torch.__version__, "repeats_ms_per_step": [1e3 * t / steps for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["conv_vae", "dense_ae"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=f"benchmarks/results/train_speed-{jax.default_backend()}.json")
    args = parser.parse_args()
    mnist = load_bundled_mnist()
    device = jax.devices()[0]
    results = {"backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
               "jax": jax.__version__, "machine": platform.processor() or platform.machine(), "models": {}}
    for name in args.models:
        batch = MODEL_DEFAULTS[name]["batch_size"]
        epoch_steps = num_batches(len(mnist.train_images), batch)
        steps = CPU_WINDOW_STEPS[name] if results["backend"] == "cpu" else epoch_steps
        ours = time_vaejax(name, mnist, steps, args.repeats)
        theirs = time_torch(name, mnist.train_images, steps, args.repeats)
        results["models"][name] = {
            "batch_size": batch, "window_steps": steps, "same_function": same_function(name, mnist.test_images),
            "vaejax": ours | {"images_per_s": 1e3 * batch / ours["ms_per_step"],
                              "epoch_s": epoch_steps * ours["ms_per_step"] / 1e3},
            "torch": theirs | {"images_per_s": 1e3 * batch / theirs["ms_per_step"],
                               "epoch_s": epoch_steps * theirs["ms_per_step"] / 1e3},
            "ratio_vaejax_over_torch": ours["ms_per_step"] / theirs["ms_per_step"],
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"backend {results['backend']} ({results['device']}), JAX {results['jax']}; "
          f"PyTorch {theirs['version']} eager on {theirs['device']} with {theirs['threads']} threads")
    print(f"{'model':9s} {'batch':>5s} {'loop':>8s} {'vaejax ms':>10s} {'torch ms':>9s} {'ratio':>6s} "
          f"{'vaejax img/s':>12s} {'torch img/s':>11s} {'epoch s':>15s} {'compile s':>9s} {'same loss':>9s}")
    for name, row in results["models"].items():
        ours, theirs, check = row["vaejax"], row["torch"], row["same_function"]
        loop = ours["loop"] + (f" x{ours['micro_batches']}" if ours["micro_batches"] > 1 else "")
        print(f"{name:9s} {row['batch_size']:5d} {loop:>8s} {ours['ms_per_step']:10.2f} "
              f"{theirs['ms_per_step']:9.2f} {row['ratio_vaejax_over_torch']:6.2f} {ours['images_per_s']:12.0f} "
              f"{theirs['images_per_s']:11.0f} {ours['epoch_s']:7.1f}/{theirs['epoch_s']:<7.1f} "
              f"{ours['compile_s']:9.2f} {check['loss_relative_difference']:9.1e}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
