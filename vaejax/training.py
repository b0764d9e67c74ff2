"""The Trainer (a run's compiled steps and device-resident data) and the epoch loop.

The pure parts (state, keys, loss, steps, sums) are in vaejax.steps; every device decision comes
from a vaejax.devices.DevicePlan; host work (checkpoints, figures, logs) goes to a background
vaejax.host_worker.HostWorker so that it overlaps the next epoch.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import optax

from vaejax import checkpoint, validation
from vaejax.batching import SET_BATCH, num_batches
from vaejax.checkpoint import RunDirectory
from vaejax.config import Config
from vaejax.data import Dataset, load_dataset
from vaejax.devices import DevicePlan, device_memory_bytes, plan_devices
from vaejax.errors import TrainingInterrupted, VaejaxError
from vaejax.host_worker import HostWorker
from vaejax.inference import evaluation_images
from vaejax.keys import epoch_keys, seed_keys
from vaejax.models import AutoEncoder, activation_bytes_per_image, build_model
from vaejax.optimizers import make_optimizer
from vaejax.steps import (
    EVAL_LOSS,
    LossSpec,
    TrainState,
    epoch_means,
    first_nonfinite_step,
    init_state,
    make_epoch_scan,
    make_eval_scan,
    make_eval_step,
    make_loss,
    make_train_step,
    micro_batched,
    zero_sums,
)

# A training step's temporary memory per image over its forward activations: XLA:CPU's compiled
# memory analysis gave 1.9 (conv_vae) and 1.4 (dense_ae); 3 leaves room for other backends.
TRAIN_BYTES_PER_ACTIVATION_BYTE = 3


def loss_spec(config: Config) -> LossSpec:
    """The training loss `config` asks for."""
    return LossSpec(config.objective, config.train_samples, config.binarized, config.beta)


def shuffled_epoch(rng: jax.Array, count: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The epoch's one split of its key: (the next epoch's key, this epoch's shuffled order of the
    `count` training images, its step key)."""
    next_rng, shuffle_key, step_root = epoch_keys(rng)
    return next_rng, jax.random.permutation(shuffle_key, count), step_root


@dataclass
class Trainer:
    """The compiled steps of one run and the device-resident data they read, laid out as `plan` says.

    With `loss.binarize`, training batches are binarized afresh each step; the test set is binarized
    once, the same way for every run (vaejax.inference.evaluation_images), so evaluations compare.
    """

    model: AutoEncoder
    optimizer: optax.GradientTransformation
    batch_size: int
    dataset: Dataset  # host arrays; placed on the device(s) as train_data and test_data
    eval_key: jax.Array
    plan: DevicePlan
    loss: LossSpec = LossSpec()
    steps: int = field(init=False)  # per epoch, the last batch padded
    eval_batches: int = field(init=False)
    train_data: tuple = field(init=False)  # (uint8 images, labels) on the device(s)
    test_data: tuple = field(init=False)
    train_step: Callable = field(init=False)  # compiled: one step
    train_scan: Callable = field(init=False)  # compiled: a whole epoch
    eval_step: Callable = field(init=False)  # compiled: one test batch
    eval_scan: Callable = field(init=False)  # compiled: every test batch
    shuffle: Callable = field(init=False)  # compiled: `shuffled_epoch` of an epoch's key

    def __post_init__(self):
        plan, dataset = self.plan, self.dataset
        self.steps = num_batches(dataset.train_images.shape[0], self.batch_size)
        self.eval_batches = num_batches(dataset.test_images.shape[0], SET_BATCH)
        self.train_data = plan.place((dataset.train_images, dataset.train_labels))
        self.test_data = plan.place((evaluation_images(dataset.test_images, self.loss.binarize), dataset.test_labels))
        self.eval_key = plan.place(self.eval_key)
        train_loss = micro_batched(make_loss(self.model, self.loss), plan.micro_batches)
        step = make_train_step(train_loss, self.optimizer, self.batch_size, plan.batch_sharding)
        self.train_step = jax.jit(step, donate_argnums=plan.donated)
        self.train_scan = jax.jit(make_epoch_scan(step, self.steps), donate_argnums=plan.donated)
        eval_loss = micro_batched(make_loss(self.model, EVAL_LOSS), plan.micro_batches)
        eval_step = make_eval_step(eval_loss, plan.eval_sharding(SET_BATCH))
        self.eval_step = jax.jit(eval_step, donate_argnums=(1,), out_shardings=plan.replicated)
        self.eval_scan = jax.jit(make_eval_scan(eval_step, self.eval_batches), donate_argnums=(1,),
                                 out_shardings=plan.replicated)
        # Compiled with placed outputs: over several processes every array a step reads must be global.
        self.shuffle = jax.jit(functools.partial(shuffled_epoch, count=dataset.train_images.shape[0]),
                               out_shardings=plan.replicated)

    def train_epoch(self, state: TrainState, order: jax.Array, step_root: jax.Array,
                    after_step: Callable[[TrainState], bool] = lambda state: False) -> TrainState:
        """Run the rest of the current epoch in `order` (`shuffle`), or until `after_step(state)`
        returns True (stop)."""
        done = int(state.step)
        if self.plan.epoch_in_one_call and done == 0:
            return self.train_scan(state, *self.train_data, order, step_root)
        for _ in range(done, self.steps):  # also finishes a scan epoch that was resumed mid-way
            state = self.train_step(state, *self.train_data, order, step_root)
            if after_step(state):
                break
        return state

    def evaluate(self, params) -> tuple[dict[str, float], np.ndarray]:
        """Test-set means of the metrics, and the test images' latent means (host arrays): in one
        compiled call with the epoch loops, else a call per test batch."""
        sums = self.plan.place(zero_sums())
        if self.plan.epoch_in_one_call:
            sums, means = self.eval_scan(params, sums, *self.test_data, self.eval_key)
        else:
            means = []
            for batch in range(self.eval_batches):
                sums, batch_means = self.eval_step(params, sums, *self.test_data, np.int32(batch), self.eval_key)
                means.append(batch_means)
        means = np.concatenate(self.plan.to_host(means))  # (batches, SET_BATCH, latent) or a list
        return epoch_means(sums), means.reshape(-1, means.shape[-1])[: self.dataset.test_images.shape[0]]


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
    seconds: dict[str, float]  # where the run's wall time went (see `train`)


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
    """What a caller may watch of training (progress bars, figures, logs); does nothing by default.

    `end_epoch` gets host copies; slow host work belongs in `worker.submit`, which runs it in the
    background, in order, while the next epoch trains."""

    def start_run(self, model: AutoEncoder, dataset: Dataset, worker: HostWorker) -> None:
        pass

    def start_epoch(self, epoch: int, steps: int, steps_done: int) -> None:
        pass

    def step(self, state: TrainState) -> None:
        pass

    def end_epoch(self, record: dict, params, step_losses: np.ndarray, history: list[dict],
                  test_means: np.ndarray | None) -> None:
        """After an epoch: its record, host params, per-step losses, the history so far, and the
        test set's latent means (None when the evaluation saw other images than the figures)."""


class Stopwatch:
    """Sums of wall seconds per phase of the training thread."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started


def train(config: Config, dataset: Dataset | None = None, log: Callable[[str], None] = print,
          observer: Observer | None = None) -> TrainResult:
    """Run (or resume) training as `config` says, writing the work directory as it goes.

    A checkpoint is written after every epoch (in the background, in order; the epoch's line is
    printed once it is on disk), and after the current step when SIGINT/SIGTERM arrives (then
    TrainingInterrupted is raised once every earlier write has finished). A non-finite loss stops
    the run before its epoch is checkpointed, so the last good checkpoint stays.

    Over several processes (`jax.distributed`) only process 0 writes the work directory, and holds its
    lock (vaejax.files.WorkdirLock) for the whole run; every process reads it to resume, so it must be
    on a shared file system. params.msgpack is written once the run has finished, after its last
    checkpoint, and removed when a resume trains on, so it never falls behind the checkpoint.

    `TrainResult.seconds` splits the wall time: `setup`, `train`, `evaluate`, `epoch_end` (host
    copies, figure arrays), `wait` (for background work at the end), and per kind of background
    task (`checkpoint`, `figures`, `tensorboard`), which overlapped the rest.
    """
    clock = Stopwatch()
    with contextlib.ExitStack() as owned:  # the work directory's lock, from before its first write to the last
        return _train(config, dataset, log, observer or Observer(), clock, owned)


def _train(config: Config, dataset: Dataset | None, log: Callable[[str], None], observer: Observer,
           clock: Stopwatch, owned: contextlib.ExitStack) -> TrainResult:
    with clock("setup"):
        if dataset is None:
            dataset = load_dataset(config.dataset, config.data_dir)
        dataset = dataset.limited(config.limit)
        config.check_dataset(len(dataset.train_images))
        plan = plan_devices(config.model, config.batch_size, config.loop, config.micro_batches)
        model = build_model(config.model, config.latent_dim, config.inputs_decoder)
        validation.memory_bound("--batch_size", config.batch_size // plan.device_count,
                                TRAIN_BYTES_PER_ACTIVATION_BYTE * activation_bytes_per_image(model)
                                * config.train_samples,
                                device_memory_bytes(), "a training step's activations on one device")
        run_dir = RunDirectory(config, plan.writes)
        run_dir.open(owned, plan.bits_record(), log)
        optimizer = make_optimizer(config.schedule, config.learning_rate,
                                   num_batches(len(dataset.train_images), config.batch_size))
        keys = seed_keys(config.seed)
        trainer = Trainer(model, optimizer, config.batch_size, dataset, keys.eval, plan, loss_spec(config))
        state, history = run_dir.restore(init_state(model, optimizer, keys, trainer.steps), log)
        state = plan.place(state)
        for line in plan.describe(config.batch_size):
            log(line)
        run_dir.write_metrics(history)
        if int(state.epoch) < config.epochs:  # a finished run trains on: its params would fall behind
            run_dir.discard_params()
    worker = HostWorker()
    with StopSignal() as stop:
        try:
            observer.start_run(model, dataset, worker)
            state = EpochLoop(trainer, run_dir, observer, worker, stop, log, clock).run(state, history)
            with clock("wait"):
                worker.close()
        except KeyboardInterrupt:  # a second Ctrl-C: abort at once; the last checkpoint on disk is whole
            raise
        except BaseException:
            worker.keep_only("checkpoint")  # checkpoints already queued still land, figures do not
            with contextlib.suppress(Exception):  # the first error is the one to report
                worker.close()
            raise
    run_dir.save_params(plan.to_host(state.params))  # after the last checkpoint: they agree
    return TrainResult(config, model, state.params, dataset, history, run_dir.path,
                       clock.seconds | dict(worker.seconds))


@dataclass
class EpochLoop:
    """The epochs still to run, and where they go: checkpoints and metrics to the run directory,
    through the background worker, as host copies; each epoch's record to the observer and the log."""

    trainer: Trainer
    run_dir: RunDirectory
    observer: Observer
    worker: HostWorker
    stop: StopSignal
    log: Callable[[str], None]
    clock: Stopwatch

    def save(self, host_state, history: list[dict], line: str | None = None) -> None:
        self.run_dir.save(host_state, history)
        if line is not None:  # an epoch's line is printed once its checkpoint is on disk
            self.log(line)

    def host_copy(self, state: TrainState):
        """The state as a checkpoint stores it; None where this process writes nothing (the copy of the
        whole state to the host is then not made)."""
        return checkpoint.host_state(state) if self.run_dir.writes else None

    def after_step(self, state: TrainState) -> bool:
        self.observer.step(state)
        return self.stop()

    def run(self, state: TrainState, history: list[dict]) -> TrainState:
        trainer, worker, stop, clock = self.trainer, self.worker, self.stop, self.clock
        plan, config = trainer.plan, self.run_dir.config
        while int(state.epoch) < config.epochs:
            epoch = int(state.epoch) + 1
            started = time.perf_counter()
            self.observer.start_epoch(epoch, trainer.steps, int(state.step))
            with clock("train"):
                next_rng, order, step_root = trainer.shuffle(state.rng)
                state = trainer.train_epoch(state, order, step_root, self.after_step)
                bad_step = first_nonfinite_step(state.sums)  # the epoch's first sync with the host
            if bad_step is not None:
                raise VaejaxError(
                    f"loss became non-finite in epoch {epoch} at step {bad_step + 1} of {trainer.steps}; "
                    f"stopped, the last good checkpoint (epoch {epoch - 1}) is kept"
                )
            if int(state.step) < trainer.steps:
                worker.keep_only("checkpoint")  # earlier checkpoints first, then this one; no more figures
                worker.drain()
                self.save(self.host_copy(state), list(history))
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch} after step {int(state.step)} of {trainer.steps}; "
                    f"checkpoint written, continue with --resume", stop.signum,
                )
            with clock("evaluate"):
                train_metrics = epoch_means(state.sums)
                test_metrics, test_means = trainer.evaluate(state.params)
            seconds = time.perf_counter() - started
            with clock("epoch_end"):
                step_losses = np.asarray(plan.to_host(state.sums["step_losses"]))
                state = plan.place(state.replace(rng=next_rng, epoch=np.int32(epoch),
                                                 step=np.int32(0), sums=zero_sums(trainer.steps)))
                record = {
                    "epoch": epoch, "train": train_metrics, "test": test_metrics,
                    "seconds": round(seconds, 3), "config_hash": config.result_hash(),
                }
                history.append(record)
                line = format_epoch(epoch, config.epochs, train_metrics, test_metrics, seconds,
                                    trainer.model.variational)
                worker.submit("checkpoint",
                              functools.partial(self.save, self.host_copy(state), list(history), line))
                # The figures reuse the evaluation's latent means, unless it saw a binarized test set.
                self.observer.end_epoch(record, plan.to_host(state.params), step_losses, list(history),
                                        None if trainer.loss.binarize else test_means)
            if stop():  # a scan epoch cannot stop mid-way: it stops here, checkpointed
                worker.keep_only("checkpoint")
                worker.drain()
                raise TrainingInterrupted(
                    f"interrupted after epoch {epoch}; checkpoint written, continue with --resume", stop.signum,
                )
        return state

