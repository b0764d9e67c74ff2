"""Train state, the compiled train and eval steps, and the epoch loop.

Randomness: one seed gives a root key, split once into the init key, the training stream (stored
in the state and split each epoch into a shuffle key and a step key folded with the step index),
the fixed evaluation key, and the fixed key for figure samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from vaejax import checkpoint
from vaejax.config import Config
from vaejax.data import IMAGE_PIXELS, Dataset, load_dataset
from vaejax.errors import VaejaxError
from vaejax.losses import loss_terms
from vaejax.models import AutoEncoder, build_model, init_params

EVAL_BATCH_SIZE = 1000
METRIC_NAMES = ("loss", "bce", "kl")


@struct.dataclass
class TrainState:
    """Everything a resumed run needs: params, optimizer state, the training key, epochs done."""

    params: dict
    opt_state: optax.OptState
    rng: jax.Array
    epoch: jax.Array


@dataclass(frozen=True)
class SeedKeys:
    init: jax.Array
    train: jax.Array
    eval: jax.Array
    sample: jax.Array


def seed_keys(seed: int) -> SeedKeys:
    """Every key of a run, derived from `--seed` alone."""
    return SeedKeys(*jax.random.split(jax.random.key(seed), 4))


def init_state(model: AutoEncoder, optimizer: optax.GradientTransformation, keys: SeedKeys) -> TrainState:
    params = init_params(model, keys.init)
    return TrainState(params, optimizer.init(params), keys.train, jnp.zeros((), jnp.int32))


def images_to_float(images_uint8: jax.Array) -> jax.Array:
    """uint8 (B, 28, 28) -> float32 (B, 28, 28, 1) in [0, 1]; done inside the compiled step."""
    return (images_uint8.astype(jnp.float32) / 255.0)[..., None]


def batch_indices(order: jax.Array, step: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Indices of batch `step` in `order`, padded to `batch_size`, and 1/0 weights marking real ones."""
    positions = step * batch_size + jnp.arange(batch_size)
    count = order.shape[0]
    weights = (positions < count).astype(jnp.float32)
    return order[jnp.minimum(positions, count - 1)], weights


def batch_loss(model: AutoEncoder, params, images_uint8, weights, key) -> tuple[jax.Array, dict]:
    images = images_to_float(images_uint8)
    logits, mean, std = model.apply({"params": params}, images, key)
    terms = loss_terms(logits, images.reshape(-1, IMAGE_PIXELS), mean, std, weights)
    return terms["loss"], terms


def weighted_sums(terms: dict, weights: jax.Array) -> dict:
    """Batch means back to sums, so epoch means weigh every image once."""
    count = weights.sum()
    return {name: terms[name] * count for name in METRIC_NAMES} | {"count": count}


def add_sums(total: dict, batch: dict) -> dict:
    return jax.tree_util.tree_map(jnp.add, total, batch)


def zero_sums() -> dict:
    return {name: jnp.zeros((), jnp.float32) for name in (*METRIC_NAMES, "count")}


def make_train_step(model: AutoEncoder, optimizer: optax.GradientTransformation, batch_size: int):
    """The pure (state, sums, images, order, step, key) -> (state, sums) training step.

    The batch is gathered on device from the uint8 training set by the shuffled `order`, so nothing
    crosses to the host per step.
    """

    def train_step(state: TrainState, sums: dict, train_images, order, step, step_root):
        indices, weights = batch_indices(order, step, batch_size)
        key = jax.random.fold_in(step_root, step)
        grads, terms = jax.grad(
            lambda params: batch_loss(model, params, train_images[indices], weights, key),
            has_aux=True,
        )(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(params=params, opt_state=opt_state)
        return state, add_sums(sums, weighted_sums(terms, weights))

    return train_step


def make_epoch_scan(train_step, steps: int):
    """The same step `steps` times inside one compiled `lax.scan`: one dispatch per epoch."""

    def train_epoch(state: TrainState, sums: dict, train_images, order, step_root):
        def body(carry, step):
            return train_step(*carry, train_images, order, step, step_root), None

        return jax.lax.scan(body, (state, sums), jnp.arange(steps, dtype=jnp.int32))[0]

    return train_epoch


# Which loop ran faster, measured with benchmarks/loop_structure.py (ms per step, per-step jit vs
# epoch scan) on the 2-core CPU: conv_vae 305 vs 3933 (scan 12.9x slower: XLA:CPU runs the
# convolutions inside a loop body far slower), dense_ae 1.15 vs 0.69 (dispatch cost dominates).
# Backends not measured yet use per-step jit.
MEASURED_FASTER_LOOP = {("cpu", "conv_vae"): "step", ("cpu", "dense_ae"): "scan"}


def choose_loop(loop: str, model_name: str, backend: str) -> str:
    """Resolve `--loop auto` to the loop measured faster for this model on this backend."""
    if loop != "auto":
        return loop
    return MEASURED_FASTER_LOOP.get((backend, model_name), "step")


def make_eval_step(model: AutoEncoder):
    """A compiled (params, sums, images, batch, key) -> sums step over the test set in order."""

    def eval_step(params, sums: dict, test_images, batch, eval_key):
        order = jnp.arange(test_images.shape[0])
        indices, weights = batch_indices(order, batch, EVAL_BATCH_SIZE)
        key = jax.random.fold_in(eval_key, batch)
        _, terms = batch_loss(model, params, test_images[indices], weights, key)
        return add_sums(sums, weighted_sums(terms, weights))

    return jax.jit(eval_step, donate_argnums=(1,))


def epoch_means(sums: dict) -> dict[str, float]:
    """Fetch the device sums once and turn them into per-image means (and the per-pixel BCE)."""
    host = jax.device_get(sums)
    means = {name: float(host[name] / host["count"]) for name in METRIC_NAMES}
    means["bce_per_pixel"] = means["bce"] / IMAGE_PIXELS
    return means


def num_batches(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


@dataclass
class Trainer:
    """The compiled steps of one run and the device-resident data they read."""

    model: AutoEncoder
    optimizer: optax.GradientTransformation
    batch_size: int
    train_images: jax.Array
    test_images: jax.Array
    eval_key: jax.Array
    loop: str = "step"  # "step": one compiled call per step; "scan": one per epoch

    def __post_init__(self):
        self.steps = num_batches(self.train_images.shape[0], self.batch_size)
        step = make_train_step(self.model, self.optimizer, self.batch_size)
        # State and running sums are donated: updated in place, never copied.
        self.train_step = jax.jit(step, donate_argnums=(0, 1))
        self.train_scan = jax.jit(make_epoch_scan(step, self.steps), donate_argnums=(0, 1))
        self.eval_step = make_eval_step(self.model)

    def train_epoch(self, state: TrainState) -> tuple[TrainState, dict[str, float]]:
        rng, shuffle_key, step_root = jax.random.split(state.rng, 3)
        # Swap in the next key before the state is donated (the old key may be shared, e.g. SeedKeys).
        state = state.replace(rng=rng, epoch=state.epoch + 1)
        order = jax.random.permutation(shuffle_key, self.train_images.shape[0])
        sums = zero_sums()
        if self.loop == "scan":
            state, sums = self.train_scan(state, sums, self.train_images, order, step_root)
        else:
            for step in range(self.steps):
                state, sums = self.train_step(state, sums, self.train_images, order, jnp.int32(step), step_root)
        return state, epoch_means(sums)

    def evaluate(self, params) -> dict[str, float]:
        sums = zero_sums()
        for batch in range(num_batches(self.test_images.shape[0], EVAL_BATCH_SIZE)):
            sums = self.eval_step(params, sums, self.test_images, jnp.int32(batch), self.eval_key)
        return epoch_means(sums)


def format_epoch(epoch: int, epochs: int, train: dict, test: dict, seconds: float, variational: bool) -> str:
    parts = f"bce {test['bce']:.3f} + kl {test['kl']:.3f}; " if variational else ""
    return (
        f"epoch {epoch:3d}/{epochs}  train {train['loss']:8.3f}  test {test['loss']:8.3f} nats"
        f"  ({parts}{test['bce_per_pixel']:.4f}/pixel)  {seconds:6.1f}s"
    )


@dataclass
class TrainResult:
    config: Config
    model: AutoEncoder
    params: dict
    dataset: Dataset
    history: list[dict]
    workdir: Path


def train(config: Config, dataset: Dataset | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Run (or resume) training as `config` says, writing the work directory as it goes."""
    workdir = Path(config.workdir)
    checkpoint.prepare_workdir(workdir, config)
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir)
    dataset = dataset.limited(config.limit)
    if config.batch_size > len(dataset.train_images):
        raise VaejaxError(
            f"--batch_size {config.batch_size} is larger than the {len(dataset.train_images)} training images"
        )

    model = build_model(config.model, config.latent_dim, config.inputs_decoder)
    optimizer = optax.adam(config.learning_rate)
    keys = seed_keys(config.seed)
    state = init_state(model, optimizer, keys)
    if config.resume:
        state = checkpoint.restore_state(workdir, config, state)
    trainer = Trainer(
        model, optimizer, config.batch_size,
        jax.device_put(dataset.train_images), jax.device_put(dataset.test_images), keys.eval,
        loop=choose_loop(config.loop, config.model, jax.default_backend()),
    )

    start_epoch = int(state.epoch)
    history = checkpoint.read_metrics(workdir, upto_epoch=start_epoch)
    checkpoint.write_metrics(workdir, history)
    if start_epoch:
        log(f"resumed from {workdir / checkpoint.CHECKPOINT_FILE} after epoch {start_epoch}")
    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        state, train_metrics = trainer.train_epoch(state)
        test_metrics = trainer.evaluate(state.params)
        seconds = time.perf_counter() - started
        if not np.isfinite(train_metrics["loss"]):
            raise VaejaxError(f"training diverged in epoch {epoch}: train loss {train_metrics['loss']}")
        checkpoint.save_state(workdir, config, state)
        record = {
            "epoch": epoch, "train": train_metrics, "test": test_metrics,
            "seconds": round(seconds, 3), "config_hash": config.result_hash(),
        }
        history.append(record)
        checkpoint.append_metric(workdir, record)
        log(format_epoch(epoch, config.epochs, train_metrics, test_metrics, seconds, model.variational))

    checkpoint.save_params(workdir, state.params)
    return TrainResult(config, model, state.params, dataset, history, workdir)
