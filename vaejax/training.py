"""Train state, the compiled train and eval steps, and the epoch loop.

Randomness: one seed gives a root key, split once into the init key, the training stream (stored
in the state; each epoch's key splits into the next epoch's key, a shuffle key, and a step key
folded with the step index), the fixed evaluation key, and the fixed key for figure samples.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vaejax import checkpoint
from vaejax.config import Config
from vaejax.data import IMAGE_PIXELS, Dataset, load_dataset
from vaejax.errors import TrainingInterrupted, VaejaxError
from vaejax.losses import loss_terms
from vaejax.models import AutoEncoder, binarize_pixels, binarized_test_images, build_model, images_to_float, init_params

EVAL_BATCH_SIZE = 1000
METRIC_NAMES = ("loss", "bce", "kl")


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


def seed_keys(seed: int) -> SeedKeys:
    """Every key of a run, derived from `--seed` alone."""
    return SeedKeys(*jax.random.split(jax.random.key(seed), 4))


def init_state(model: AutoEncoder, optimizer: optax.GradientTransformation, keys: SeedKeys,
               steps_per_epoch: int) -> TrainState:
    params = init_params(model, keys.init)
    # The state is donated to the train step: give it its own copy of the key.
    return TrainState(params, optimizer.init(params), jnp.copy(keys.train), jnp.int32(0), jnp.int32(0),
                      zero_sums(steps_per_epoch))


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


def batch_loss(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False
               ) -> tuple[jax.Array, dict]:
    """The weighted batch loss and its terms; with `binarize`, pixels are first drawn as Bernoulli(intensity)."""
    images = images_to_float(images_uint8)
    if binarize:
        binarize_key, key = jax.random.split(key)
        images = binarize_pixels(binarize_key, images)
    logits, mean, std = model.apply({"params": params}, images, key, labels)
    terms = loss_terms(logits, images.reshape(-1, IMAGE_PIXELS), mean, std, weights)
    return terms["loss"], terms


NO_STEP = np.iinfo(np.int32).max


def zero_sums(steps: int = 0) -> dict:
    """Running sums of the metrics; with `steps`, also room for each step's loss (for per-step logs)."""
    sums = {name: jnp.zeros((), jnp.float32) for name in (*METRIC_NAMES, "count")}
    sums["first_nonfinite_step"] = jnp.int32(NO_STEP)
    if steps:
        sums["step_losses"] = jnp.zeros((steps,), jnp.float32)
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


def micro_batch_loss(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False,
                     micro_batches: int = 1) -> tuple[jax.Array, dict]:
    """`batch_loss`, computed over `micro_batches` consecutive parts of the batch.

    Each part's terms are weighted by its share of the batch's real images and added: the same
    function as the whole batch, other rounding, other noise (part i draws from `fold_in(key, i)`).
    The parts are independent sub-graphs, forward and backward, and XLA:CPU runs independent
    sub-graphs side by side while it runs one convolution on one core (benchmarks/layer_profile.py,
    loop_structure.py): that is what they are for.
    """
    if micro_batches == 1:
        return batch_loss(model, params, images_uint8, labels, weights, key, binarize)
    count = jnp.maximum(weights.sum(), 1.0)
    parts = zip(*(jnp.array_split(array, micro_batches) for array in (images_uint8, labels, weights)), strict=True)
    weighted_terms = []
    for index, (part_images, part_labels, part_weights) in enumerate(parts):
        share = part_weights.sum() / count  # a part's terms are means over its own real images
        _, terms = batch_loss(model, params, part_images, part_labels, part_weights, jax.random.fold_in(key, index),
                              binarize)
        weighted_terms.append(jax.tree.map(lambda term, share=share: term * share, terms))
    terms = jax.tree.map(lambda *parts: functools.reduce(jnp.add, parts), *weighted_terms)
    return terms["loss"], terms


def batch_gradient(model: AutoEncoder, params, images_uint8, labels, weights, key, binarize: bool = False,
                   micro_batches: int = 1) -> tuple[dict, dict]:
    """The gradient of `micro_batch_loss` with respect to `params`, and its terms."""
    return jax.grad(
        lambda params: micro_batch_loss(model, params, images_uint8, labels, weights, key, binarize, micro_batches),
        has_aux=True,
    )(params)


def make_train_step(model: AutoEncoder, optimizer: optax.GradientTransformation, batch_size: int,
                    batch_sharding: NamedSharding | None = None, binarize: bool = False, micro_batches: int = 1):
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
        grads, terms = batch_gradient(model, state.params, images, labels, weights, key, binarize, micro_batches)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(
            params=optax.apply_updates(state.params, updates), opt_state=opt_state,
            step=step + 1, sums=accumulate(state.sums, terms, weights, step),
        )

    return train_step


SCAN_UNROLL = 8  # steps per loop iteration of `--loop unrolled`


def make_epoch_scan(train_step, steps: int, unroll: int = 1):
    """The same step `steps` times inside one compiled `lax.scan`: one dispatch per epoch. With
    `unroll` > 1 the loop body holds that many steps (fewer iterations, more room to fuse)."""

    def train_epoch(state: TrainState, train_images, train_labels, order, step_root) -> TrainState:
        def body(carry, _):
            return train_step(carry, train_images, train_labels, order, step_root), None

        return jax.lax.scan(body, state, length=steps, unroll=unroll)[0]

    return train_epoch


# Which loop ran faster, measured with benchmarks/loop_structure.py (ms per step, per-step jit vs
# epoch scan) on the 2-core CPU: conv_vae 305 vs 3933 (scan 12.9x slower: XLA:CPU runs the
# convolutions inside a loop body far slower), dense_ae 1.15 vs 0.69 (dispatch cost dominates).
# `unrolled` (8 steps per iteration) won neither: conv_vae 3031 vs scan 3378 vs step 206.5, dense_ae
# 0.55 vs scan 0.53.
# Backends not measured yet use per-step jit.
MEASURED_FASTER_LOOP = {("cpu", "conv_vae"): "step", ("cpu", "dense_ae"): "scan"}


def choose_loop(loop: str, model_name: str, backend: str) -> str:
    """Resolve `--loop auto` to the loop measured faster for this model on this backend."""
    if loop != "auto":
        return loop
    return MEASURED_FASTER_LOOP.get((backend, model_name), "step")


# How many micro-batches (`micro_batch_loss`) ran fastest, measured with benchmarks/loop_structure.py
# on the 2-core CPU (ms per step for 1 / 2 / 4): conv_vae 190.8 / 123.7 / 130.2, conv_cvae 187.7 /
# 132.0 / 138.6 (per-step loop); dense_ae 0.52 / 0.55 (scan). XLA:CPU runs each convolution on one
# core (benchmarks/layer_profile.py), two independent halves of the batch on two. Elsewhere: 1.
MEASURED_FASTER_MICRO_BATCHES = {("cpu", "conv_vae"): 2, ("cpu", "conv_cvae"): 2}


def choose_micro_batches(micro_batches: int | None, model_name: str, backend: str, devices: int) -> int:
    """Resolve `--micro_batches auto` (None): the count measured fastest on a single device; with
    several devices the batch is already split over them, so 1."""
    if micro_batches is not None:
        return micro_batches
    return 1 if devices > 1 else MEASURED_FASTER_MICRO_BATCHES.get((backend, model_name), 1)


def make_eval_step(model: AutoEncoder, batch_sharding: NamedSharding | None = None,
                   replicated: NamedSharding | None = None, micro_batches: int = 1):
    """A compiled (params, sums, images, labels, batch, key) -> sums step over the test set in order.
    With `batch_sharding` each device evaluates its slice of the batch and the sums come out
    `replicated`; with `micro_batches` the batch is evaluated in parts side by side."""

    def eval_step(params, sums: dict, test_images, test_labels, batch, eval_key):
        order = jnp.arange(test_images.shape[0])
        images, labels, weights = gather_batch(test_images, test_labels, order, batch, EVAL_BATCH_SIZE,
                                               batch_sharding)
        key = jax.random.fold_in(eval_key, batch)
        _, terms = micro_batch_loss(model, params, images, labels, weights, key, micro_batches=micro_batches)
        return accumulate(sums, terms, weights, batch)

    return jax.jit(eval_step, donate_argnums=(1,), out_shardings=replicated)


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


def data_parallel_shardings(batch_size: int) -> tuple[NamedSharding | None, NamedSharding | None]:
    """(batch split over all devices, replicated), or (None, None) on a single device.

    With several processes (`jax.distributed`), the devices are those of every host: each process
    holds the data and computes the same batch order, and the compiled step gives each device (so
    each host) only its slice of the global batch.
    """
    devices = jax.devices()
    if len(devices) == 1:
        return None, None
    if batch_size % len(devices):
        raise VaejaxError(f"--batch_size {batch_size} does not divide evenly over {len(devices)} devices")
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


@dataclass
class Trainer:
    """The compiled steps of one run and the device-resident data they read.

    With `binarize`, training batches are binarized afresh each step; the test set is binarized
    once, the same way for every run (`binarized_test_images`), so evaluations compare.
    """

    model: AutoEncoder
    optimizer: optax.GradientTransformation
    batch_size: int
    dataset: Dataset  # host arrays; __post_init__ places them on the device(s)
    eval_key: jax.Array
    loop: str = "step"  # "step": one compiled call per step; "scan", "unrolled": one per epoch
    binarize: bool = False
    micro_batches: int = 1  # parts of a batch computed side by side (`micro_batch_loss`)

    def __post_init__(self):
        self.steps = num_batches(self.dataset.train_images.shape[0], self.batch_size)
        self.batch_sharding, self.replicated = data_parallel_shardings(self.batch_size)
        if self.micro_batches > 1 and self.batch_sharding is not None:
            raise VaejaxError(f"--micro_batches {self.micro_batches} needs a single device; the batch is already "
                              f"split over {jax.device_count()} devices")
        test_images = self.dataset.test_images
        if self.binarize:
            test_images = binarized_test_images(test_images)
        self.train_data = self.place((self.dataset.train_images, self.dataset.train_labels))
        self.test_data = self.place((test_images, self.dataset.test_labels))
        step = make_train_step(self.model, self.optimizer, self.batch_size, self.batch_sharding, self.binarize,
                               self.micro_batches)
        # The state is donated (updated in place, never copied), except with micro-batches: then XLA
        # copies the params for the parts still reading them and orders the parts after the copies
        # (conv_vae on the 2-core CPU: 139 ms a step donated, 124 not; whole batches: 191 vs 196).
        donated = (0,) if self.micro_batches == 1 else ()
        self.train_step = jax.jit(step, donate_argnums=donated)
        unroll = SCAN_UNROLL if self.loop == "unrolled" else 1
        self.train_scan = jax.jit(make_epoch_scan(step, self.steps, unroll), donate_argnums=donated)
        # The test batches are split over the devices too, when they divide evenly.
        divides = self.batch_sharding is not None and EVAL_BATCH_SIZE % jax.device_count() == 0
        self.eval_step = make_eval_step(self.model, self.batch_sharding if divides else None, self.replicated,
                                        self.micro_batches)
        self.eval_key = self.place(self.eval_key)
        # Compiled with placed outputs: over several processes every array a step reads must be global.
        count = self.dataset.train_images.shape[0]
        self.epoch_order = jax.jit(functools.partial(epoch_order, count=count), out_shardings=self.replicated)
        self.next_rng = jax.jit(lambda rng: epoch_keys(rng)[0], out_shardings=self.replicated)

    def place(self, tree):
        """On the default device, or a copy on every device when several (data parallelism)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(self._place_global, tree)

    def _place_global(self, leaf):
        """A leaf as a global array over every process's devices: from host values (the same on
        every process), with PRNG keys placed as their raw data and wrapped again on the devices."""
        if isinstance(leaf, jax.Array) and leaf.sharding == self.replicated:
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), self.replicated)
            wrap = functools.partial(jax.random.wrap_key_data, impl=jax.random.key_impl(leaf))
            return jax.jit(wrap, out_shardings=self.replicated)(data)
        return jax.device_put(np.asarray(leaf), self.replicated)

    def train_epoch(self, state: TrainState, after_step: Callable[[TrainState], bool] = lambda state: False
                    ) -> TrainState:
        """Run the rest of the current epoch, or until `after_step(state)` returns True (stop)."""
        order, step_root = self.epoch_order(state.rng)
        done = int(state.step)
        if self.loop in ("scan", "unrolled") and done == 0:
            return self.train_scan(state, *self.train_data, order, step_root)
        for _ in range(done, self.steps):  # also finishes a scan epoch that was resumed mid-way
            state = self.train_step(state, *self.train_data, order, step_root)
            if after_step(state):
                break
        return state

    def evaluate(self, params) -> dict[str, float]:
        sums = zero_sums()
        for batch in range(num_batches(self.dataset.test_images.shape[0], EVAL_BATCH_SIZE)):
            sums = self.eval_step(params, sums, *self.test_data, jnp.int32(batch), self.eval_key)
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


class StopSignal:
    """Turns SIGINT/SIGTERM into a request to stop after the current step (a second one aborts)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            self.previous = {signum: signal.signal(signum, self.handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


class Observer:
    """What a caller may watch of training (progress bars, figures, logs); does nothing by default."""

    def start_run(self, model: AutoEncoder, dataset: Dataset) -> None:
        pass

    def start_epoch(self, epoch: int, steps: int, steps_done: int) -> None:
        pass

    def step(self, state: TrainState) -> None:
        pass

    def end_epoch(self, record: dict, params, step_losses: np.ndarray, history: list[dict]) -> None:
        pass


def train(config: Config, dataset: Dataset | None = None, log: Callable[[str], None] = print,
          observer: Observer | None = None) -> TrainResult:
    """Run (or resume) training as `config` says, writing the work directory as it goes.

    A checkpoint is written after every epoch, and after the current step when SIGINT/SIGTERM
    arrives (then TrainingInterrupted is raised). A non-finite loss stops the run before its epoch
    is checkpointed, so the last good checkpoint stays.

    Over several processes (`jax.distributed`) only process 0 writes the work directory; every
    process reads it to resume, so it must be on a shared file system.
    """
    observer = observer or Observer()
    workdir = Path(config.workdir)
    writes = jax.process_index() == 0
    if writes:
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
    trainer = Trainer(
        model, optimizer, config.batch_size, dataset, keys.eval,
        loop=choose_loop(config.loop, config.model, jax.default_backend()),
        binarize=config.binarize == "dynamic",
        micro_batches=choose_micro_batches(config.micro_batches, config.model, jax.default_backend(),
                                           jax.device_count()),
    )
    state, history = init_state(model, optimizer, keys, trainer.steps), []
    if config.resume:
        state, history = checkpoint.restore_state(workdir, config, state, log)
    state = trainer.place(state)
    if trainer.batch_sharding is not None:
        log(f"data parallel: each batch of {config.batch_size} split over {jax.device_count()} devices"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))
    if trainer.micro_batches > 1:
        log(f"each batch's gradient summed over {trainer.micro_batches} micro-batches differentiated side by side")
    if writes:
        checkpoint.write_metrics(workdir, history)
    observer.start_run(model, dataset)

    with StopSignal() as stop:

        def after_step(state: TrainState) -> bool:
            observer.step(state)
            return stop()

        while int(state.epoch) < config.epochs:
            epoch = int(state.epoch) + 1
            started = time.perf_counter()
            observer.start_epoch(epoch, trainer.steps, int(state.step))
            state = trainer.train_epoch(state, after_step)
            bad_step = first_nonfinite_step(state.sums)
            if bad_step is not None:
                raise VaejaxError(
                    f"loss became non-finite in epoch {epoch} at step {bad_step + 1} of {trainer.steps}; "
                    f"stopped, the last good checkpoint (epoch {epoch - 1}) is kept"
                )
            if int(state.step) < trainer.steps:
                if writes:
                    checkpoint.save_state(workdir, config, state, history)
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch} after step {int(state.step)} of {trainer.steps}; "
                    f"checkpoint written, continue with --resume", stop.signum,
                )
            train_metrics = epoch_means(state.sums)
            step_losses = np.asarray(jax.device_get(state.sums["step_losses"]))
            test_metrics = trainer.evaluate(state.params)
            state = trainer.place(state.replace(rng=trainer.next_rng(state.rng), epoch=jnp.int32(epoch),
                                                step=jnp.int32(0), sums=zero_sums(trainer.steps)))
            seconds = time.perf_counter() - started
            record = {
                "epoch": epoch, "train": train_metrics, "test": test_metrics,
                "seconds": round(seconds, 3), "config_hash": config.result_hash(),
            }
            history.append(record)
            if writes:
                checkpoint.save_state(workdir, config, state, history)
                checkpoint.write_metrics(workdir, history)
            log(format_epoch(epoch, config.epochs, train_metrics, test_metrics, seconds, model.variational))
            # Over several processes, params are global arrays: the observer gets a host copy, so its
            # own compiled figure code runs on this process alone.
            observer.end_epoch(record, state.params if jax.process_count() == 1 else jax.device_get(state.params),
                               step_losses, history)
            if stop():  # a scan epoch cannot stop mid-way: it stops here, checkpointed
                raise TrainingInterrupted(
                    f"interrupted after epoch {epoch}; checkpoint written, continue with --resume", stop.signum,
                )

    if writes:
        checkpoint.save_params(workdir, state.params)
    return TrainResult(config, model, state.params, dataset, history, workdir)
