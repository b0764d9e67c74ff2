"""The pure part of training: train state, keys, the batch loss and its gradient, the train and eval
steps, and the metric sums. No device decisions here (vaejax.devices), no loop (vaejax.training).

Randomness: one seed gives a root key, split once into the init key, the training stream (stored
in the state; each epoch's key splits into the next epoch's key, a shuffle key, and a step key
folded with the step index), the fixed evaluation key, and the fixed key for figure samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding

from vaejax.batching import map_batches
from vaejax.data import IMAGE_PIXELS
from vaejax.losses import Objective, importance_terms, loss_terms
from vaejax.models import AutoEncoder, binarize_pixels, decode, encode, images_to_float, init_params

EVAL_BATCH_SIZE = 1000
METRIC_NAMES = ("loss", "bce", "kl")
SCAN_UNROLL = 8  # steps per loop iteration of `--loop unrolled`
ELBO = Objective()  # the seeds' loss: one draw, analytic KL


@struct.dataclass
class TrainState:
    """Everything a resumed run needs, at an epoch boundary or in the middle of an epoch."""

    params: dict
    opt_state: optax.OptState
    rng: jax.Array  # this epoch's key (split into shuffle and step keys); advanced when the epoch ends
    epoch: jax.Array  # epochs completed
    step: jax.Array  # steps completed in the current epoch
    sums: dict  # the current epoch's metric sums so far


@dataclass(frozen=True)
class SeedKeys:
    init: jax.Array
    train: jax.Array
    eval: jax.Array
    sample: jax.Array


def root_key(seed: int) -> jax.Array:
    """The key of a seed from 0 to 2^64 - 1. JAX (without x64) keeps a seed's low 32 bits only, so
    2^32 would alias 0: a seed's high 32 bits are folded into the key of its low ones. Seeds below
    2^32 give `jax.random.key(seed)` itself."""
    low, high = seed & 0xFFFFFFFF, seed >> 32
    key = jax.random.key(low)
    return jax.random.fold_in(key, high) if high else key


@functools.partial(jax.jit, static_argnums=0)
def _split_seed(seed: int) -> tuple[jax.Array, ...]:
    return tuple(jax.random.split(root_key(seed), 4))  # four outputs: no eager unstack after


def seed_keys(seed: int) -> SeedKeys:
    """Every key of a run, derived from `--seed` alone."""
    return SeedKeys(*_split_seed(seed))


def init_state(model: AutoEncoder, optimizer: optax.GradientTransformation, keys: SeedKeys,
               steps_per_epoch: int) -> TrainState:
    """The state before the first step, built by one compiled program (run op by op, Flax's init
    compiles dozens of small programs)."""

    def build(init_key, train_key):
        params = init_params(model, init_key)
        return TrainState(params, optimizer.init(params), train_key, jnp.int32(0), jnp.int32(0),
                          zero_sums(steps_per_epoch))

    return jax.jit(build)(keys.init, keys.train)


def epoch_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(next epoch's key, this epoch's shuffle key, this epoch's step key)."""
    next_rng, shuffle_key, step_root = jax.random.split(rng, 3)
    return next_rng, shuffle_key, step_root


def epoch_order(rng: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """This epoch's shuffled order of the `count` training images, and its step key."""
    _, shuffle_key, step_root = epoch_keys(rng)
    return jax.random.permutation(shuffle_key, count), step_root


def batch_indices(order: jax.Array, step: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Indices of batch `step` in `order`, padded to `batch_size`, and 1/0 weights marking real ones."""
    positions = step * batch_size + jnp.arange(batch_size)
    count = order.shape[0]
    weights = (positions < count).astype(jnp.float32)
    return order[jnp.minimum(positions, count - 1)], weights


def gather_batch(images, labels, order: jax.Array, step: jax.Array, batch_size: int,
                 batch_sharding: NamedSharding | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch `step` of device-resident `images` and `labels` in `order`, with its 1/0 weights; with
    `batch_sharding`, split over the devices (each computes its slice)."""
    indices, weights = batch_indices(order, step, batch_size)
    batch = images[indices], labels[indices], weights
    return batch if batch_sharding is None else jax.lax.with_sharding_constraint(batch, batch_sharding)


def batch_terms(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False,
                objective: Objective = ELBO) -> tuple[dict, jax.Array]:
    """The weighted batch loss's terms (of `objective`) and the batch's latent means; with `binarize`,
    pixels are first drawn as Bernoulli(intensity)."""
    images = images_to_float(images_uint8)
    if binarize:
        binarize_key, key = jax.random.split(key)
        images = binarize_pixels(binarize_key, images)
    targets = images.reshape(-1, IMAGE_PIXELS)
    if objective.single_draw_elbo:
        logits, mean, std = model.apply({"params": params}, images, key, labels)
        return loss_terms(logits, targets, mean, std, weights), mean
    mean, std = encode(model, params, images, labels)
    repeated_labels = None if labels is None else jnp.tile(labels, objective.samples)  # draw-major, as z

    def decode_logits(z):
        return decode(model, params, z, repeated_labels)

    return importance_terms(decode_logits, targets, mean, std, weights, key, objective), mean


def batch_loss(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False
               ) -> tuple[jax.Array, dict]:
    """The weighted batch loss and its terms (`batch_terms`)."""
    terms, _ = batch_terms(model, params, images_uint8, labels, weights, key, binarize)
    return terms["loss"], terms


# Burda et al. 2016 (IWAE): 3^i epochs at learning rate 1e-3 * 10^(-i/7) for i = 0..7, Adam eps 1e-4.
IWAE_SCHEDULE_BLOCKS = 8
IWAE_ADAM_EPS = 1e-4


def iwae_learning_rate(base: float, steps_per_epoch: int):
    """The IWAE paper's schedule as a function of Adam's update count: block i starts at epoch
    (3^i - 1) / 2 and runs at base * 10^(-i/7); after the last block the rate stays at its end."""
    block_starts = jnp.array([(3**block - 1) // 2 for block in range(1, IWAE_SCHEDULE_BLOCKS)])

    def learning_rate(count):
        block = jnp.sum(count // steps_per_epoch >= block_starts)
        return base * 10.0 ** (-block / 7.0)

    return learning_rate


def make_optimizer(schedule: str, learning_rate: float, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam at a constant rate (the seeds), or with the IWAE paper's schedule and epsilon."""
    if schedule == "iwae":
        return optax.adam(iwae_learning_rate(learning_rate, steps_per_epoch), eps=IWAE_ADAM_EPS)
    return optax.adam(learning_rate)


NO_STEP = np.iinfo(np.int32).max


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


def micro_batch_terms(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False,
                      micro_batches: int = 1, objective: Objective = ELBO) -> tuple[dict, jax.Array]:
    """`batch_terms`, computed over `micro_batches` consecutive parts of the batch.

    Each part's terms are weighted by its share of the batch's real images and added: the same
    function as the whole batch, other rounding, other noise (part i draws from `fold_in(key, i)`).
    The parts are independent sub-graphs, forward and backward, and XLA:CPU runs independent
    sub-graphs side by side while it runs one convolution on one core (benchmarks/layer_profile.py,
    loop_structure.py): that is what they are for.
    """
    if micro_batches == 1:
        return batch_terms(model, params, images_uint8, labels, weights, key, binarize, objective)
    count = jnp.maximum(weights.sum(), 1.0)
    parts = zip(*(jnp.array_split(array, micro_batches) for array in (images_uint8, labels, weights)), strict=True)
    weighted_terms, means = [], []
    for index, (part_images, part_labels, part_weights) in enumerate(parts):
        share = part_weights.sum() / count  # a part's terms are means over its own real images
        terms, mean = batch_terms(model, params, part_images, part_labels, part_weights,
                                  jax.random.fold_in(key, index), binarize, objective)
        weighted_terms.append(jax.tree.map(lambda term, share=share: term * share, terms))
        means.append(mean)
    terms = jax.tree.map(lambda *parts: functools.reduce(jnp.add, parts), *weighted_terms)
    return terms, jnp.concatenate(means)


def micro_batch_loss(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False,
                     micro_batches: int = 1, objective: Objective = ELBO) -> tuple[jax.Array, dict]:
    """The batch loss and its terms over `micro_batches` parts (`micro_batch_terms`)."""
    terms, _ = micro_batch_terms(model, params, images_uint8, labels, weights, key, binarize, micro_batches,
                                 objective)
    return terms["loss"], terms


def batch_gradient(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False,
                   micro_batches: int = 1, objective: Objective = ELBO) -> tuple[dict, dict]:
    """The gradient of `micro_batch_loss` with respect to `params`, and its terms."""
    return jax.grad(
        lambda params: micro_batch_loss(model, params, images_uint8, labels, weights, key, binarize, micro_batches,
                                        objective),
        has_aux=True,
    )(params)


def make_train_step(model: AutoEncoder, optimizer: optax.GradientTransformation, batch_size: int,
                    batch_sharding: NamedSharding | None = None, binarize: bool = False, micro_batches: int = 1,
                    objective: Objective = ELBO):
    """The pure (state, images, labels, order, step_key) -> state training step; it runs step `state.step`.

    The batch is gathered on device from the uint8 training set by the shuffled `order`, so nothing
    crosses to the host per step. With `binarize` each step draws a fresh binarization of its batch
    (dynamic binarization). With `batch_sharding` the batch is split over the devices and
    XLA adds the gradient all-reduce (params and state stay replicated). With `micro_batches` > 1 the
    loss is the sum over that many parts of the batch (`micro_batch_loss`).
    """

    def train_step(state: TrainState, train_images, train_labels, order, step_root) -> TrainState:
        step = state.step
        images, labels, weights = gather_batch(train_images, train_labels, order, step, batch_size, batch_sharding)
        key = jax.random.fold_in(step_root, step)
        grads, terms = batch_gradient(model, state.params, images, labels, weights, key, binarize, micro_batches,
                                      objective)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state,
            step=step + 1, sums=accumulate(state.sums, terms, weights, step),
        )

    return train_step


def make_epoch_scan(train_step, steps: int, unroll: int = 1):
    """The same step `steps` times inside one compiled `lax.scan`: one dispatch per epoch. With
    `unroll` > 1 the loop body holds that many steps (fewer iterations, more room to fuse)."""

    def train_epoch(state: TrainState, train_images, train_labels, order, step_root) -> TrainState:
        def body(carry, _):
            return train_step(carry, train_images, train_labels, order, step_root), None

        return jax.lax.scan(body, state, length=steps, unroll=unroll)[0]

    return train_epoch


# Reported metrics are computed at full float32 precision on every backend (a GPU's default float32
# matmul and convolution is TF32; XLA:CPU computes float32 fully either way).
METRIC_PRECISION = "highest"


def full_precision(function):
    """`function`, traced at METRIC_PRECISION (for code that computes reported numbers)."""

    @functools.wraps(function)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(METRIC_PRECISION):
            return function(*args, **kwargs)

    return traced


ENCODE_BATCH = 1000  # images per compiled call when a whole set is encoded


def make_mean_encoder(model: AutoEncoder):
    """Compiled (params, uint8 images, labels) -> latent means, at METRIC_PRECISION: the codes that the
    figures and the explorer show and the samplers are fitted to."""
    return jax.jit(full_precision(
        lambda params, images, labels: encode(model, params, images_to_float(images), labels)[0]))


def encode_in_batches(mean_encoder, params, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The latent means (N, d) of many images by `mean_encoder` (`make_mean_encoder`), ENCODE_BATCH at
    a time (one shape, one compile)."""
    return map_batches(lambda images, labels: mean_encoder(params, images, labels), (images, labels), ENCODE_BATCH)


def make_eval_step(model: AutoEncoder, batch_sharding: NamedSharding | None = None, micro_batches: int = 1):
    """The pure (params, sums, images, labels, batch, key) -> (sums, latent means) step over batch
    `batch` of the test set in order. With `batch_sharding` each device evaluates its slice of the
    batch; with `micro_batches` the batch is evaluated in parts side by side."""

    def eval_step(params, sums: dict, test_images, test_labels, batch, eval_key):
        order = jnp.arange(test_images.shape[0])
        images, labels, weights = gather_batch(test_images, test_labels, order, batch, EVAL_BATCH_SIZE,
                                               batch_sharding)
        key = jax.random.fold_in(eval_key, batch)
        terms, means = micro_batch_terms(model, params, images, labels, weights, key, micro_batches=micro_batches)
        return accumulate(sums, terms, weights, batch), means

    return full_precision(eval_step)


def make_eval_scan(eval_step, batches: int):
    """Every test batch inside one compiled `lax.scan`: the whole evaluation in one call, with the
    same batches, keys and sums as `batches` calls of `eval_step`; the means stacked per batch."""

    def evaluate(params, sums: dict, test_images, test_labels, eval_key):
        def body(sums, batch):
            return eval_step(params, sums, test_images, test_labels, batch, eval_key)

        return jax.lax.scan(body, sums, jnp.arange(batches, dtype=jnp.int32))

    return evaluate


def epoch_means(sums: dict) -> dict[str, float]:
    """Fetch the device sums once and turn them into per-image means (and the per-pixel BCE)."""
    host = jax.device_get(sums)
    means = {name: float(host[name] / host["count"]) for name in METRIC_NAMES}
    means["bce_per_pixel"] = means["bce"] / IMAGE_PIXELS
    return means


def first_nonfinite_step(sums: dict) -> int | None:
    step = int(sums["first_nonfinite_step"])
    return None if step == NO_STEP else step


def num_batches(count: int, batch_size: int) -> int:
    return -(-count // batch_size)
