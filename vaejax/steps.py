"""The pure part of training: the train state, the batch, the loss as a spec, and the train and eval
steps with their scans and metric sums. No device decisions here (vaejax.devices), no loop
(vaejax.training), no key derived here that vaejax.keys does not name.

    loss_fn = micro_batched(make_loss(model, spec), parts)       # (params, batch, key) -> (loss, (terms, means))
    train_step = make_train_step(loss_fn, optimizer, batch_size)  # (state, images, labels, order, step key) -> state
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding

from vaejax.batching import SET_BATCH, batch_indices
from vaejax.data import IMAGE_PIXELS
from vaejax.inference import binarize_pixels, full_precision
from vaejax.keys import SeedKeys, binarization_keys, eval_batch_key, part_key, step_key
from vaejax.losses import importance_terms, kl_weighted, loss_terms
from vaejax.models import AutoEncoder, decode, encode, images_to_float, init_params

METRIC_NAMES = ("loss", "bce", "kl")
NO_STEP = np.iinfo(np.int32).max


@struct.dataclass
class TrainState:
    """Everything a resumed run needs, at an epoch boundary or in the middle of an epoch."""

    params: dict
    opt_state: optax.OptState
    rng: jax.Array  # this epoch's key (vaejax.keys.epoch_keys); advanced when the epoch ends
    epoch: jax.Array  # epochs completed
    step: jax.Array  # steps completed in the current epoch
    sums: dict  # the current epoch's metric sums so far


@struct.dataclass
class Batch:
    """A batch as one pytree: it is gathered, sharded, split and scanned as one value."""

    images: jax.Array  # uint8 (B, 28, 28)
    labels: jax.Array  # (B,)
    weights: jax.Array  # 1 for real images, 0 for the padding of a short last batch

    def split(self, parts: int) -> list[Batch]:
        """`parts` consecutive parts of the batch (the first ones one row longer when it does not divide)."""
        pieces = (jnp.array_split(array, parts) for array in (self.images, self.labels, self.weights))
        return [Batch(*arrays) for arrays in zip(*pieces, strict=True)]


@dataclass(frozen=True)
class LossSpec:
    """The training loss. `elbo`: BCE averaged over `samples` draws per image plus the analytic KL
    weighted by `beta` (one draw, beta 1: the seeds' loss; beta != 1: Higgins et al.'s beta-VAE).
    `iwae`: Burda et al.'s `samples`-draw bound. `dreg`: the same bound with Tucker et al.'s doubly
    reparameterised gradient for the encoder. `binarize`: pixels are first drawn as Bernoulli(intensity)."""

    objective: str = "elbo"
    samples: int = 1
    binarize: bool = False
    beta: float = 1.0

    @property
    def single_draw_elbo(self) -> bool:
        return self.objective == "elbo" and self.samples == 1


EVAL_LOSS = LossSpec()  # the evaluation's: the true one-draw ELBO of the (already binarized) test images


def make_loss(model: AutoEncoder, spec: LossSpec) -> Callable:
    """(params, batch, key) -> (the weighted batch loss, (its terms, the batch's latent means))."""

    def loss(params, batch: Batch, key: jax.Array):
        images = images_to_float(batch.images)
        if spec.binarize:
            binarize_key, key = binarization_keys(key)
            images = binarize_pixels(binarize_key, images)
        targets = images.reshape(-1, IMAGE_PIXELS)
        if spec.single_draw_elbo:
            logits, mean, std = model.apply({"params": params}, images, key, batch.labels)
            terms = loss_terms(logits, targets, mean, std, batch.weights)
        else:
            mean, std = encode(model, params, images, batch.labels)
            repeated_labels = jnp.tile(batch.labels, spec.samples)  # draw-major, as z
            terms = importance_terms(lambda z: decode(model, params, z, repeated_labels), targets, mean, std,
                                     batch.weights, key, spec.objective, spec.samples)
        if spec.beta != 1.0:  # beta 1 traces the seeds' graph itself
            terms = kl_weighted(terms, spec.beta)
        return terms["loss"], (terms, mean)

    return loss


def micro_batched(loss_fn: Callable, parts: int) -> Callable:
    """`loss_fn` computed over `parts` consecutive parts of the batch, with the same signature.

    Each part's terms are weighted by its share of the batch's real images and added: the same
    function as the whole batch, other rounding, other noise (part i draws from its own key).
    The parts are independent sub-graphs, forward and backward, and XLA:CPU runs independent
    sub-graphs side by side while it runs one convolution on one core (benchmarks/layer_profile.py,
    loop_structure.py): that is what they are for.
    """
    if parts == 1:
        return loss_fn

    def loss(params, batch: Batch, key: jax.Array):
        count = jnp.maximum(batch.weights.sum(), 1.0)
        weighted_terms, means = [], []
        for index, part in enumerate(batch.split(parts)):
            share = part.weights.sum() / count  # a part's terms are means over its own real images
            _, (terms, mean) = loss_fn(params, part, part_key(key, index))
            weighted_terms.append(jax.tree.map(lambda term, share=share: term * share, terms))
            means.append(mean)
        terms = jax.tree.map(lambda *parts: functools.reduce(jnp.add, parts), *weighted_terms)
        return terms["loss"], (terms, jnp.concatenate(means))

    return loss


def gather_batch(images, labels, order: jax.Array, step: jax.Array, batch_size: int,
                 batch_sharding: NamedSharding | None = None) -> Batch:
    """Batch `step` of device-resident `images` and `labels` in `order`, with its 1/0 weights; with
    `batch_sharding`, split over the devices (each computes its slice)."""
    indices, weights = batch_indices(order, step, batch_size)
    batch = Batch(images[indices], labels[indices], weights)
    return batch if batch_sharding is None else jax.lax.with_sharding_constraint(batch, batch_sharding)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, batch_size: int,
                    batch_sharding: NamedSharding | None = None):
    """The pure (state, images, labels, order, step_root) -> state training step; it runs step `state.step`.

    The batch is gathered on device from the uint8 training set by the shuffled `order`, so nothing
    crosses to the host per step. With `batch_sharding` the batch is split over the devices and XLA
    adds the gradient all-reduce (params and state stay replicated).
    """

    def train_step(state: TrainState, train_images, train_labels, order, step_root) -> TrainState:
        step = state.step
        batch = gather_batch(train_images, train_labels, order, step, batch_size, batch_sharding)
        grads, (terms, _) = jax.grad(loss_fn, has_aux=True)(state.params, batch, step_key(step_root, step))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state,
            step=step + 1, sums=accumulate(state.sums, terms, batch.weights, step),
        )

    return train_step


def make_eval_step(loss_fn: Callable, batch_sharding: NamedSharding | None = None):
    """The pure (params, sums, images, labels, batch, key) -> (sums, latent means) step over batch
    `batch` of the test set in order, at full precision. With `batch_sharding` each device evaluates
    its slice of the batch."""

    def eval_step(params, sums: dict, test_images, test_labels, batch, eval_key):
        order = jnp.arange(test_images.shape[0])
        test_batch = gather_batch(test_images, test_labels, order, batch, SET_BATCH, batch_sharding)
        _, (terms, means) = loss_fn(params, test_batch, eval_batch_key(eval_key, batch))
        return accumulate(sums, terms, test_batch.weights, batch), means

    return full_precision(eval_step)


def make_epoch_scan(train_step, steps: int):
    """The same step `steps` times inside one compiled `lax.scan`: one dispatch per epoch."""

    def train_epoch(state: TrainState, train_images, train_labels, order, step_root) -> TrainState:
        def body(carry, _):
            return train_step(carry, train_images, train_labels, order, step_root), None

        return jax.lax.scan(body, state, length=steps)[0]

    return train_epoch


def make_eval_scan(eval_step, batches: int):
    """Every test batch inside one compiled `lax.scan`: the whole evaluation in one call, with the
    same batches, keys and sums as `batches` calls of `eval_step`; the means stacked per batch."""

    def evaluate(params, sums: dict, test_images, test_labels, eval_key):
        def body(sums, batch):
            return eval_step(params, sums, test_images, test_labels, batch, eval_key)

        return jax.lax.scan(body, sums, jnp.arange(batches, dtype=jnp.int32))

    return evaluate


def init_state(model: AutoEncoder, optimizer: optax.GradientTransformation, keys: SeedKeys,
               steps_per_epoch: int) -> TrainState:
    """The state before the first step, built by one compiled program (run op by op, Flax's init
    compiles dozens of small programs)."""

    def build(init_key, train_key):
        params = init_params(model, init_key)
        return TrainState(params, optimizer.init(params), train_key, jnp.int32(0), jnp.int32(0),
                          zero_sums(steps_per_epoch))

    return jax.jit(build)(keys.init, keys.train)


def zero_sums(steps: int = 0) -> dict:
    """Running sums of the metrics; with `steps`, also room for each step's loss (for per-step logs).
    Host arrays: they cross to the device with the state, no program is compiled to make them."""
    sums = {name: np.zeros((), np.float32) for name in (*METRIC_NAMES, "count")}
    sums["first_nonfinite_step"] = np.int32(NO_STEP)
    if steps:
        sums["step_losses"] = np.zeros((steps,), np.float32)
    return sums


def accumulate(sums: dict, terms: dict, weights: jax.Array, step: jax.Array) -> dict:
    """Add a batch's means back as sums (so epoch means weigh every image once); note the first
    step whose loss is not finite, so the host learns of it without a sync per step."""
    count = weights.sum()
    added = {name: sums[name] + terms[name] * count for name in METRIC_NAMES}
    nonfinite = ~jnp.isfinite(terms["loss"])
    first = jnp.where(nonfinite, jnp.minimum(sums["first_nonfinite_step"], step), sums["first_nonfinite_step"])
    added |= {"count": sums["count"] + count, "first_nonfinite_step": first}
    if "step_losses" in sums:
        added["step_losses"] = sums["step_losses"].at[step].set(terms["loss"])
    return added


def epoch_means(sums: dict) -> dict[str, float]:
    """Fetch the device sums once and turn them into per-image means (and the per-pixel BCE)."""
    host = jax.device_get(sums)
    means = {name: float(host[name] / host["count"]) for name in METRIC_NAMES}
    means["bce_per_pixel"] = means["bce"] / IMAGE_PIXELS
    return means


def first_nonfinite_step(sums: dict) -> int | None:
    step = int(sums["first_nonfinite_step"])
    return None if step == NO_STEP else step
