"""Every figure of a run: reconstructions, prior samples, the latent space, learning curves.

`RunFigures` draws one epoch's figures from the params of that epoch into `<workdir>/figures/`:
`NAME_eNNN.png` per epoch plus `NAME.png`, a copy of the latest, so links stay stable. Each file is
written atomically (vaejax.files). The drawing functions below it take plain arrays, so they are
usable (and testable) without a model.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vaejax.config import Config  # noqa: E402
from vaejax.data import IMAGE_SIDE, Dataset  # noqa: E402
from vaejax.files import atomic_write, make_folder  # noqa: E402
from vaejax.inference import (  # noqa: E402
    NORMAL_GRID_PROBABILITIES,
    cell_extent,
    latent_means,
    linear_grid_values,
    mean_encoder,
    normal_grid_values,
    pixel_decoder,
    principal_plane,
    prior_draws,
)
from vaejax.keys import seed_keys  # noqa: E402
from vaejax.models import AutoEncoder  # noqa: E402

DPI = 100
SAMPLE_GRID = 8


@dataclass
class EpochImages:
    """Tiled pictures of an epoch (values in [0, 1]), also sent to TensorBoard."""

    reconstructions: np.ndarray
    samples: np.ndarray | None


@dataclass
class FigureArrays:
    """Everything an epoch's figures show, as host arrays: computed on the device in the training
    thread, drawn by `RunFigures.draw` (in the background during training)."""

    images: np.ndarray  # the test images shown, uint8 (n, 28, 28)
    labels: np.ndarray
    reconstructions: np.ndarray  # (n, 784) in [0, 1]
    samples: np.ndarray | None  # prior samples (VAEs)
    means: np.ndarray | None = None  # the test set's latent means (with plot_latent)
    grid_axes: tuple[np.ndarray, np.ndarray] | None = None  # z values of the linear grid (latent 2)
    grid: np.ndarray | None = None  # the linear grid decoded and tiled
    normal_grid: np.ndarray | None = None  # the inverse-CDF grid decoded and tiled (VAEs)

    def epoch_images(self, sample_shape: tuple[int, int]) -> EpochImages:
        count = len(self.images)
        shown = np.concatenate([self.images.reshape(count, -1) / 255.0, self.reconstructions])
        return EpochImages(tile(shown, 2, count), None if self.samples is None else tile(self.samples, *sample_shape))


class RunFigures:
    """Draws a run's figures; the decoder and encoder are compiled once, params change per epoch."""

    @classmethod
    def for_run(cls, config: Config, model: AutoEncoder, dataset: Dataset) -> RunFigures:
        return cls(Path(config.workdir) / "figures", model, dataset, config.latent_dim,
                   config.test_image_number, config.plot_latent, seed_keys(config.seed).sample)

    def __init__(self, folder: Path, model: AutoEncoder, dataset: Dataset, latent_dim: int,
                 test_image_number: int, plot_latent: bool, sample_key: jax.Array):
        self.folder = folder
        self.model, self.dataset, self.latent_dim = model, dataset, latent_dim
        self.shown = slice(0, test_image_number)
        self.plot_latent = plot_latent
        self.prior_z, self.sample_labels, self.sample_shape = None, None, (SAMPLE_GRID, SAMPLE_GRID)
        if model.variational:
            self.prior_z, self.sample_labels = prior_grid(sample_key, latent_dim, model.num_classes)
            if model.conditional:  # one column per class, one row per z: the rows show style, the columns class
                self.sample_shape = (SAMPLE_GRID, model.num_classes)
        self.kept: dict[str, Figure] = {}  # figures made once and updated each epoch (`save`)
        # At the evaluation's full float32 precision: training's figures use its latent means, and a
        # redraw (`python -m vaejax.plot`) must give the same picture on every backend.
        self.to_pixels, self.to_means = pixel_decoder(model), mean_encoder(model)

    def test_means(self, params, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Latent means of many images, encoded in batches."""
        return latent_means(self.model, params, images, labels)

    def write_epoch(self, epoch: int, params, history: list[dict]) -> EpochImages:
        """All figures of `epoch` (its number in the file names), drawn with `params`, and the
        learning curves of `history`."""
        arrays = self.epoch_arrays(params)
        self.draw(epoch, arrays, history)
        return arrays.epoch_images(self.sample_shape)

    def epoch_arrays(self, params, test_means: np.ndarray | None = None) -> FigureArrays:
        """What the figures of `params` show, computed on the device, as host arrays; the test set's
        latent means are encoded here unless given (training's evaluation computes them anyway)."""
        dataset = self.dataset
        images, labels = dataset.test_images[self.shown], dataset.test_labels[self.shown]
        reconstructions = np.asarray(self.to_pixels(params, self.to_means(params, images, labels), labels))
        samples = None if self.prior_z is None else np.asarray(self.to_pixels(params, self.prior_z, self.sample_labels))
        arrays = FigureArrays(images, labels, reconstructions, samples)
        if not self.plot_latent:
            return arrays
        arrays.means = (self.test_means(params, dataset.test_images, dataset.test_labels) if test_means is None
                        else test_means)
        if self.latent_dim == 2 and not self.model.conditional:
            # A conditional decoder needs a class for every grid point: only the scatter is drawn.
            xs, ys = linear_grid_values(arrays.means, self.model.variational)
            arrays.grid_axes, arrays.grid = (xs, ys), self.decode_grid(params, xs, ys)
            if self.model.variational:
                z = normal_grid_values()
                arrays.normal_grid = self.decode_grid(params, z, z)
        return arrays

    def draw(self, epoch: int, arrays: FigureArrays, history: list[dict]) -> None:
        """Write the figures of `arrays` as epoch `epoch`'s, and the learning curves of `history`.

        Figures whose axes stay are made once and then updated in place (new pixels and points; the
        same axes, text and layout), so later epochs skip making figures and laying them out."""
        make_folder(self.folder)
        model, names = self.model, self.dataset.class_names
        # Made anew: their tick labels change with the history, and so would the layout.
        save_figure(plot_learning_curves(history, model.variational), self.folder / "learning_curves.png")
        count = len(arrays.images)
        titles = [names[label] for label in arrays.labels]
        self.save("reconstructions", epoch,
                  lambda: plot_reconstructions(arrays.images, arrays.reconstructions, titles),
                  lambda fig: [axis.images[0].set_data(pixels.reshape(IMAGE_SIDE, IMAGE_SIDE))
                               for axis, pixels in zip(fig.axes[count:], arrays.reconstructions, strict=True)])
        if arrays.samples is not None:
            self.save("samples", epoch,
                      lambda: plot_samples(arrays.samples, self.sample_shape, names if model.conditional else None),
                      lambda fig: fig.axes[0].images[0].set_data(tile(arrays.samples, *self.sample_shape)))
        if arrays.means is not None:
            self.draw_latent(epoch, arrays)

    def draw_latent(self, epoch: int, arrays: FigureArrays) -> None:
        """The latent scatter; at latent 2 beside the decoded grid (a VAE's fixed z grid keeps its axes,
        so its figures are updated in place; a plain AE's grid spans its codes, so its axes move)."""
        labels, names, means = self.dataset.test_labels, self.dataset.class_names, arrays.means
        if arrays.grid is None:
            coords, title = project_2d(means)
            if self.model.conditional:
                title += " (class given to encoder and decoder)"
            self.save("latent", epoch, lambda: plot_latent_scatter(coords, labels, names, title))
            return
        xs, ys = arrays.grid_axes

        def update_latent(fig):
            move_points(fig.axes[0], means, labels)
            fig.axes[1].images[0].set_data(arrays.grid)

        self.save("latent", epoch, lambda: plot_latent_with_grid(means, labels, names, xs, ys, arrays.grid),
                  update_latent if self.model.variational else None)
        if arrays.normal_grid is not None:
            def update_normal(fig):
                move_points(fig.axes[0], normal_cdf(means), labels)
                fig.axes[1].images[0].set_data(arrays.normal_grid)

            self.save("latent_normal_grid", epoch,
                      lambda: plot_latent_normal_grid(means, labels, names, NORMAL_GRID_PROBABILITIES,
                                                      arrays.normal_grid), update_normal)

    def decode_grid(self, params, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Decoded images of the grid, tiled with z2 growing upwards, as a plot's y axis does."""
        xx, yy = np.meshgrid(xs, ys[::-1])
        z = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
        return tile(np.asarray(self.to_pixels(params, z)), len(ys), len(xs))

    def save(self, name: str, epoch: int, make: Callable[[], Figure],
             update: Callable[[Figure], object] | None = None) -> None:
        """Write figure `name` as `NAME_eNNN.png` and a copy as `NAME.png`. With `update`, the figure
        is made by `make` once, then kept and changed by `update`, which must leave every text and
        axis limit as it was (so the layout holds, and the output equals a figure made anew)."""
        if update is None:
            png = png_bytes(make(), close=True)
        else:
            if name in self.kept:
                update(self.kept[name])
            else:
                self.kept[name] = make()
            png = png_bytes(self.kept[name])
        atomic_write(self.folder / f"{name}_e{epoch:03d}.png", png)
        atomic_write(self.folder / f"{name}.png", png)

    def close(self) -> None:
        for fig in self.kept.values():
            plt.close(fig)
        self.kept.clear()


def move_points(axis, coords: np.ndarray, labels: np.ndarray) -> None:
    """New positions for a `scatter_by_class` plot's points (one collection per class, in order)."""
    for label, points in enumerate(axis.collections):
        points.set_offsets(coords[labels == label])


@functools.partial(jax.jit, static_argnums=(1, 2))
def prior_grid(sample_key: jax.Array, latent_dim: int, num_classes: int) -> tuple[jax.Array, jax.Array | None]:
    """The figures' fixed prior draws: SAMPLE_GRID**2 of them; for a conditional model SAMPLE_GRID,
    each repeated once per class, with the class labels (one program, not one per operation)."""
    z = prior_draws(sample_key, SAMPLE_GRID**2, latent_dim)
    if not num_classes:
        return z, None
    return jnp.repeat(z[:SAMPLE_GRID], num_classes, axis=0), jnp.tile(jnp.arange(num_classes), SAMPLE_GRID)


def png_bytes(fig: Figure, close: bool = False) -> bytes:
    """The figure as PNG, as `savefig` writes it to a file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    if close:
        plt.close(fig)
    return buffer.getvalue()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write the figure to `path` as PNG, atomically, and close it."""
    atomic_write(path, png_bytes(fig, close=True))
    return path


def tile(pixels: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(rows*columns, 784) pixels -> one (rows*28, columns*28) picture, row-major."""
    return (pixels.reshape(rows, columns, IMAGE_SIDE, IMAGE_SIDE)
            .transpose(0, 2, 1, 3).reshape(rows * IMAGE_SIDE, columns * IMAGE_SIDE))


def project_2d(means: np.ndarray) -> tuple[np.ndarray, str]:
    """Latent means as 2-d points: themselves, against nothing (1-d), or their first two PCs."""
    if means.shape[1] == 2:
        return means, "Latent means of the test set"
    if means.shape[1] == 1:
        return np.concatenate([means, np.zeros_like(means)], axis=1), "Latent means of the test set (1-d)"
    center, components, explained = principal_plane(means)
    title = (f"Latent means ({means.shape[1]}-d) on their first two principal components "
             f"({explained:.0%} of the variance)")
    return (means - center) @ components.T, title


def plot_reconstructions(images: np.ndarray, reconstructions: np.ndarray, titles: list[str]):
    """Test images (top row) over their reconstructions decoded from the latent mean (bottom)."""
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(1.5 * count + 0.6, 3.4), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(images[column], cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(titles[column], fontsize=9)
        axes[1, column].imshow(reconstructions[column].reshape(IMAGE_SIDE, IMAGE_SIDE),
                               cmap="gray", vmin=0, vmax=1)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    fig.tight_layout()
    return fig


def plot_samples(pixels: np.ndarray, shape: tuple[int, int], column_titles=None):
    """Prior samples tiled `shape`; a conditional model's columns are titled with their class."""
    rows, columns = shape
    fig, axis = plt.subplots(figsize=(5 * columns / rows, 5.4))
    axis.imshow(tile(pixels, rows, columns), cmap="gray", vmin=0, vmax=1)
    axis.set_title("Samples decoded from z ~ N(0, I)" + (", one row per z" if column_titles else ""))
    if column_titles:
        axis.set_xticks([IMAGE_SIDE * (column + 0.5) for column in range(columns)], column_titles, fontsize=7)
        axis.set_yticks([])
        axis.tick_params(length=0)
    else:
        axis.axis("off")
    fig.tight_layout()
    return fig


def plot_sample_sheet(pixels: np.ndarray, titles: list[str] | None = None):
    """Up to 100 generated images in a 10-wide sheet, each titled with its label when there are labels."""
    columns = 10
    rows = -(-len(pixels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * (1.05 if titles else 0.9)),
                             squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(pixels):
            axis.imshow(pixels[index].reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray", vmin=0, vmax=1)
            if titles:
                axis.set_title(titles[index], fontsize=7)
    fig.suptitle("Generated from z ~ N(0, I)" + (" and the label shown" if titles else ""))
    fig.tight_layout()
    return fig


def plot_interpolations(strips: np.ndarray):
    """Rows of (pairs, steps, 784) decoded images: each row walks from one test digit's latent mean
    to another's in equal steps."""
    pairs, steps, _ = strips.shape
    fig, axis = plt.subplots(figsize=(steps * 0.8, pairs * 0.8 + 0.5))
    axis.imshow(tile(strips.reshape(pairs * steps, -1), pairs, steps), cmap="gray", vmin=0, vmax=1)
    axis.set_title("Latent interpolation between pairs of test digits (ends: their reconstructions)")
    axis.axis("off")
    fig.tight_layout()
    return fig


def scatter_by_class(axis, coords: np.ndarray, labels: np.ndarray, class_names) -> None:
    """One colour of matplotlib's 10-colour palette per class, with a legend of the class names."""
    palette = plt.get_cmap("tab10")
    for label, name in enumerate(class_names):
        chosen = labels == label
        axis.scatter(coords[chosen, 0], coords[chosen, 1], s=2, color=palette(label), label=name,
                     rasterized=True)
    axis.legend(markerscale=6, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_latent_scatter(coords: np.ndarray, labels: np.ndarray, class_names, title: str):
    fig, axis = plt.subplots(figsize=(8, 6.6))
    scatter_by_class(axis, coords, labels, class_names)
    axis.set(title=title, xlabel="component 1", ylabel="component 2")
    axis.title.set_fontsize(10)
    fig.tight_layout()
    return fig


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, elementwise (float64)."""
    return np.vectorize(NormalDist().cdf)(z)


def plot_latent_with_grid(means, labels, class_names, xs, ys, grid: np.ndarray):
    """Test-set latent means beside the decoded grid, on the same z axes."""
    extent = cell_extent(xs, ys)
    fig, (scatter_axis, grid_axis) = plt.subplots(1, 2, figsize=(15, 6.6))
    scatter_by_class(scatter_axis, means, labels, class_names)
    scatter_axis.set(xlim=extent[:2], ylim=extent[2:], xlabel="z1", ylabel="z2",
                     title="Latent means of the test set")
    grid_axis.imshow(grid, cmap="gray", extent=extent, vmin=0, vmax=1, aspect="auto")
    grid_axis.set(xlabel="z1", ylabel="z2", title=f"Decoder on a linear {len(xs)}x{len(ys)} grid")
    fig.tight_layout()
    return fig


def plot_latent_normal_grid(means, labels, class_names, probabilities: np.ndarray, grid: np.ndarray):
    """The same in prior-probability coordinates: z = inverse normal CDF of an even grid in (0, 1).

    The grid is even in Phi(z), so both panels use Phi(z) axes, labelled with z values; points
    where the prior has mass get equal room.
    """
    cdf = normal_cdf
    extent = cell_extent(probabilities, probabilities)
    ticks = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    fig, (scatter_axis, grid_axis) = plt.subplots(1, 2, figsize=(15, 6.6))
    scatter_by_class(scatter_axis, cdf(means), labels, class_names)
    scatter_axis.set(xlim=extent[:2], ylim=extent[2:], title="Latent means of the test set")
    grid_axis.imshow(grid, cmap="gray", extent=extent, vmin=0, vmax=1, aspect="auto")
    grid_axis.set(title=f"Decoder on z = inverse normal CDF of a {len(probabilities)}x{len(probabilities)} grid")
    for axis in (scatter_axis, grid_axis):
        axis.set_xticks(cdf(ticks), [f"{t:g}" for t in ticks])
        axis.set_yticks(cdf(ticks), [f"{t:g}" for t in ticks])
        axis.set(xlabel="z1 (prior-probability scale)", ylabel="z2 (prior-probability scale)")
    fig.tight_layout()
    return fig


def plot_learning_curves(history: list[dict], variational: bool):
    """Train and test loss per epoch, and for a VAE its BCE and KL parts, in nats per image."""
    epochs = [record["epoch"] for record in history]
    parts = ("loss", "bce", "kl") if variational else ("loss",)
    names = {"loss": "loss (negative ELBO)" if variational else "loss (BCE)", "bce": "BCE", "kl": "KL"}
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for axis, part in zip(axes[0], parts, strict=True):
        for split, style in (("train", "o-"), ("test", "s--")):
            axis.plot(epochs, [record[split][part] for record in history], style, markersize=3, label=split)
        axis.set(title=names[part], xlabel="epoch", ylabel="nats per image")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return fig
