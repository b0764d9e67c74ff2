"""Figures of a trained model: reconstructions, prior samples, the latent scatter and decoded grid."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: figures go to files
import matplotlib.pyplot as plt  # noqa: E402

from vaejax.data import IMAGE_SIDE  # noqa: E402
from vaejax.models import decode, encode  # noqa: E402
from vaejax.training import TrainResult, images_to_float, seed_keys  # noqa: E402

SAMPLE_GRID = 8
SEED_GRID_VALUES = np.arange(-3, 4, 0.5)  # seed 000's linear 14x14 grid
ENCODE_BATCH = 1000


def write_figures(result: TrainResult) -> list[Path]:
    """Write every figure that applies to this run into <workdir>/figures and return their paths."""
    folder = result.workdir / "figures"
    folder.mkdir(exist_ok=True)
    config, dataset = result.config, result.dataset
    to_pixels = jax.jit(lambda z: jax.nn.sigmoid(decode(result.model, result.params, z)))
    to_means = jax.jit(lambda images: encode(result.model, result.params, images_to_float(images))[0])
    paths = [
        plot_reconstructions(
            folder / "reconstructions.png", dataset.test_images[: config.test_image_number],
            [dataset.class_names[label] for label in dataset.test_labels[: config.test_image_number]],
            to_means, to_pixels,
        )
    ]
    if result.model.variational:
        z = jax.random.normal(seed_keys(config.seed).sample, (SAMPLE_GRID**2, config.latent_dim))
        paths.append(plot_image_grid(folder / "samples.png", np.asarray(to_pixels(z)), "Samples from N(0, I)"))
    if config.plot_latent and config.latent_dim == 2:
        means = np.concatenate([
            np.asarray(to_means(dataset.test_images[start:start + ENCODE_BATCH]))
            for start in range(0, len(dataset.test_images), ENCODE_BATCH)
        ])
        values = SEED_GRID_VALUES if result.model.variational else data_grid_values(means)
        paths.append(plot_latent(folder / "latent.png", means, dataset.test_labels, dataset.class_names,
                                 values, to_pixels))
    return paths


def plot_reconstructions(path: Path, images: np.ndarray, titles: list[str], to_means, to_pixels) -> Path:
    """Test images (top row) over their reconstructions decoded from the latent mean (bottom)."""
    reconstructions = np.asarray(to_pixels(to_means(images)))
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(1.4 * count, 3.2), squeeze=False)
    for column in range(count):
        axes[0, column].imshow(images[column], cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(titles[column], fontsize=9)
        axes[1, column].imshow(reconstructions[column].reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray", vmin=0, vmax=1)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    return save(fig, path)


def tile(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(rows*columns, 784) pixels -> one (rows*28, columns*28) picture, row-major."""
    return (images.reshape(rows, columns, IMAGE_SIDE, IMAGE_SIDE)
            .transpose(0, 2, 1, 3).reshape(rows * IMAGE_SIDE, columns * IMAGE_SIDE))


def plot_image_grid(path: Path, pixels: np.ndarray, title: str) -> Path:
    side = int(round(len(pixels) ** 0.5))
    fig, axis = plt.subplots(figsize=(5, 5.3))
    axis.imshow(tile(pixels, side, side), cmap="gray", vmin=0, vmax=1)
    axis.set_title(title)
    axis.axis("off")
    return save(fig, path)


def data_grid_values(means: np.ndarray, points: int = 14) -> np.ndarray:
    """A grid spanning the bulk (1st-99th percentile) of a plain AE's codes, which have no prior."""
    low, high = np.percentile(means, [1, 99])
    return np.linspace(low, high, points)


def plot_latent(path: Path, means: np.ndarray, labels: np.ndarray, class_names, values, to_pixels) -> Path:
    """Test-set latent means coloured by class, beside the decoded grid on the same z axes."""
    xx, yy = np.meshgrid(values, values[::-1])  # top row of the picture = largest z2
    grid = np.asarray(to_pixels(jnp.stack([xx.ravel(), yy.ravel()], axis=1)))
    step = values[1] - values[0]
    extent = (values[0] - step / 2, values[-1] + step / 2, values[0] - step / 2, values[-1] + step / 2)

    fig, (scatter_axis, grid_axis) = plt.subplots(1, 2, figsize=(14, 6.6))
    palette = plt.get_cmap("tab10")
    for label, name in enumerate(class_names):
        chosen = labels == label
        scatter_axis.scatter(means[chosen, 0], means[chosen, 1], s=2, color=palette(label), label=name)
    scatter_axis.set(xlim=extent[:2], ylim=extent[2:], xlabel="z1", ylabel="z2", aspect="equal",
                     title="Latent means of the test set")
    scatter_axis.legend(markerscale=6, fontsize=8, loc="upper right", framealpha=0.8)
    grid_axis.imshow(tile(grid, len(values), len(values)), cmap="gray", extent=extent, vmin=0, vmax=1)
    grid_axis.set(xlabel="z1", ylabel="z2", title="Decoded latent grid")
    return save(fig, path)


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
