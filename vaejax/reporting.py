"""Watching a run: a progress bar, figures and TensorBoard logs after each epoch."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from vaejax.config import Config
from vaejax.data import Dataset
from vaejax.errors import VaejaxError
from vaejax.figures import RunFigures
from vaejax.files import atomic_write
from vaejax.host_worker import HostWorker
from vaejax.models import AutoEncoder
from vaejax.steps import TrainState
from vaejax.summary import model_summary
from vaejax.training import Observer


class EpochProgress(Observer):
    """A bar per epoch with the running loss on a terminal; nothing otherwise (CI logs keep the
    one line per epoch that training prints anyway)."""

    REFRESH_SECONDS = 0.5  # the running loss costs a device sync: fetch it at most this often

    def __init__(self, epochs: int, stream=None):
        self.epochs, self.stream = epochs, stream or sys.stderr  # the stream of the moment, not of import
        self.enabled = self.stream.isatty()
        self.bar = None
        self.refreshed = 0.0

    def start_epoch(self, epoch: int, steps: int, steps_done: int) -> None:
        if self.enabled:
            self.bar = tqdm(total=steps, initial=steps_done, desc=f"epoch {epoch}/{self.epochs}",
                            leave=False, file=self.stream, dynamic_ncols=True)

    def step(self, state: TrainState) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if time.monotonic() - self.refreshed > self.REFRESH_SECONDS:
            sums = jax.device_get({name: state.sums[name] for name in ("loss", "count")})
            self.bar.set_postfix(loss=f"{sums['loss'] / max(sums['count'], 1):.2f}")
            self.refreshed = time.monotonic()

    def end_epoch(self, record, params, step_losses, history, test_means) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardLog:
    """Event files for TensorBoard, written by tensorboardX (no TensorFlow needed)."""

    def __init__(self, folder: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def write_epoch(self, record: dict, step_losses: np.ndarray, images) -> None:
        epoch, steps = record["epoch"], len(step_losses)
        for index, loss in enumerate(step_losses):  # global step: optimizer updates so far
            self.writer.add_scalar("step/train_loss", float(loss), (epoch - 1) * steps + index + 1)
        for split in ("train", "test"):
            for name, value in record[split].items():
                self.writer.add_scalar(f"epoch/{split}_{name}", value, epoch)
        self.writer.add_image("reconstructions", images.reconstructions[None], epoch, dataformats="CHW")
        if images.samples is not None:
            self.writer.add_image("samples", images.samples[None], epoch, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Reporter(Observer):
    """Everything a user watches during `python train.py`: summary, bar, figures, TensorBoard.

    At the end of an epoch the figures' arrays are computed on the device here; drawing them and
    writing TensorBoard events go to the run's background worker."""

    def __init__(self, config: Config, log: Callable[[str], None] = print):
        self.config, self.log = config, log
        self.progress = EpochProgress(config.epochs)
        self.figures: RunFigures | None = None
        self.tensorboard: TensorBoardLog | None = None
        self.worker: HostWorker | None = None

    def start_run(self, model: AutoEncoder, dataset: Dataset, worker: HostWorker) -> None:
        workdir = Path(self.config.workdir)
        summary = model_summary(model, self.config.model)
        self.log(summary.rstrip())
        atomic_write(workdir / "model_summary.txt", summary.encode())
        if not model.variational:
            self.log(f"{self.config.model} is a plain autoencoder, not generative: no prior samples are drawn")
        self.figures = RunFigures.for_run(self.config, model, dataset)
        self.worker = worker
        if self.config.tensorboard and importlib.util.find_spec("tensorboardX") is None:
            raise VaejaxError("--tensorboard needs the tensorboardX package (pip install tensorboardX); "
                              "or pass --no-tensorboard")
        if self.config.tensorboard:  # tensorboardX takes a second to import: let the first epoch run meanwhile
            worker.submit("tensorboard", lambda: setattr(self, "tensorboard", TensorBoardLog(workdir / "tensorboard")))

    def start_epoch(self, epoch: int, steps: int, steps_done: int) -> None:
        self.progress.start_epoch(epoch, steps, steps_done)

    def step(self, state: TrainState) -> None:
        self.progress.step(state)

    def end_epoch(self, record, params, step_losses, history, test_means) -> None:
        self.progress.close()
        arrays = self.figures.epoch_arrays(params, test_means)
        self.worker.submit("figures", lambda: self.figures.draw(record["epoch"], arrays, history))
        if self.config.tensorboard:
            images = arrays.epoch_images(self.figures.sample_shape)
            self.worker.submit("tensorboard", lambda: self.tensorboard.write_epoch(record, step_losses, images))

    def close(self) -> None:
        """After training (its worker drained): close the bar, the figures and the event files."""
        self.progress.close()
        if self.figures is not None:
            self.figures.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
