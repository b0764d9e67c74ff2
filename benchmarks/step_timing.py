"""One way to time vaejax's training steps, shared by the benchmarks that compare them (train_speed.py
against PyTorch, cpu_kernels.py across XLA:CPU's kernel choices): the real Trainer on a training set of
exactly `steps` batches, so one epoch is the timed window in either loop; compile excluded.

JAX must not have started its backend before the caller has set XLA_FLAGS (this module imports JAX
but computes nothing on import)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax

from vaejax.config import MODEL_DEFAULTS
from vaejax.data import Dataset
from vaejax.devices import plan_devices
from vaejax.keys import seed_keys
from vaejax.models import build_model
from vaejax.steps import init_state, zero_sums
from vaejax.training import Trainer


def time_vaejax(name: str, dataset: Dataset, steps: int, repeats: int, micro_batches: int | None = None,
                **model_options) -> dict:
    """Milliseconds per step of model `name` at its seed batch size (median over `repeats` windows of
    `steps` steps, after one window that compiles), with `--loop auto` and `micro_batches` (None: auto)."""
    settings = MODEL_DEFAULTS[name]
    batch = settings["batch_size"]
    model = build_model(name, 2, **model_options)
    optimizer = optax.adam(settings["learning_rate"])
    keys = seed_keys(0)
    plan = plan_devices(name, batch, micro_batches=micro_batches)
    trainer = Trainer(model, optimizer, batch, dataset.limited(steps * batch), keys.eval, plan)
    state = init_state(model, optimizer, keys, trainer.steps)

    def window(state):
        _, order, step_root = trainer.shuffle(state.rng)
        state = trainer.train_epoch(state.replace(step=jnp.int32(0), sums=zero_sums(trainer.steps)), order, step_root)
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
    return {"loop": plan.loop, "micro_batches": plan.micro_batches, "ms_per_step": 1e3 * seconds / steps,
            "compile_s": first - seconds, "repeats_ms_per_step": [1e3 * t / steps for t in times]}
