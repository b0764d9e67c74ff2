"""A trained model's answers, computed the same way for every command: at full float32 precision,
the mean encoder, one compiled decoder to pixels, the images a finished run is shown (its test set
binarized or not, decided here), prior draws, and the grids and plane the figures and the explorer
lay over latent space.

Reported numbers and pictures are computed at METRIC_PRECISION on every backend: a GPU's default
float32 matmul and convolution is TF32; XLA:CPU computes float32 fully either way.
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

from vaejax.batching import SET_BATCH, map_batches
from vaejax.data import IMAGE_SIDE
from vaejax.errors import VaejaxError
from vaejax.keys import test_binarization_key
from vaejax.models import AutoEncoder, decode, encode, images_to_float

METRIC_PRECISION = "highest"
INTERPOLATION_STEPS = 10  # images along a latent interpolation, its ends included
SEED_GRID_VALUES = np.arange(-3, 4, 0.5)  # seed 000's linear 14x14 grid
NORMAL_GRID_PROBABILITIES = np.linspace(0.05, 0.95, 14)  # Kingma & Welling's layout through the inverse CDF


def full_precision(function):
    """`function`, traced at METRIC_PRECISION (for code that computes reported numbers)."""

    @functools.wraps(function)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(METRIC_PRECISION):
            return function(*args, **kwargs)

    return traced


def make_mean_encoder(model: AutoEncoder):
    """Compiled (params, uint8 images, labels) -> latent means: the codes that the figures and the
    explorer show and the samplers are fitted to."""
    return jax.jit(full_precision(
        lambda params, images, labels: encode(model, params, images_to_float(images), labels)[0]))


def make_pixel_decoder(model: AutoEncoder):
    """Compiled (params, z, labels) -> pixel probabilities (N, 784); `labels` are integers (N,), class
    weights (N, C), or None for an unconditional model."""
    return jax.jit(full_precision(
        lambda params, z, labels=None: jax.nn.sigmoid(decode(model, params, z, labels))))


@functools.cache
def mean_encoder(model: AutoEncoder):
    """`model`'s mean encoder, compiled once in a process."""
    return make_mean_encoder(model)


@functools.cache
def pixel_decoder(model: AutoEncoder):
    """`model`'s decoder to pixels, compiled once in a process."""
    return make_pixel_decoder(model)


def latent_means(model: AutoEncoder, params, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Latent means (N, d) of uint8 images (N, 28, 28), in batches."""
    return encode_in_batches(mean_encoder(model), params, images, labels)


def decode_latents(model: AutoEncoder, params, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Latent points (N, d) -> pixel probabilities (N, 784), in batches; a conditional model needs `labels`."""
    if model.conditional and labels is None:
        raise VaejaxError("a conditional model needs labels to generate")
    labels = np.zeros(len(z), np.int32) if labels is None else np.asarray(labels, np.int32)
    return decode_in_batches(pixel_decoder(model), params, z, labels)


def encode_in_batches(mean_encoder, params, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The latent means (N, d) of many images by `mean_encoder`, SET_BATCH at a time (one shape, one compile)."""
    return map_batches(lambda images, labels: mean_encoder(params, images, labels), (images, labels), SET_BATCH)


def decode_in_batches(pixel_decoder, params, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The pixel probabilities (N, 784) of many latent points by `pixel_decoder`, SET_BATCH at a time."""
    return map_batches(lambda z, labels: pixel_decoder(params, z, labels), (z, labels), SET_BATCH)


def binarize_pixels(key: jax.Array, images: jax.Array) -> jax.Array:
    """Stochastic binarization: each pixel becomes 1 with probability equal to its intensity."""
    return jax.random.bernoulli(key, images).astype(images.dtype)


def binarized_test_images(images_uint8) -> np.ndarray:
    """A fixed binarization of uint8 images, as uint8 0/255 (so it flows through the uint8 pipeline)."""
    pixels = binarize_pixels(test_binarization_key(), jnp.asarray(images_uint8, jnp.float32) / 255.0)
    return np.asarray(pixels, np.uint8) * np.uint8(255)


def evaluation_images(images_uint8: np.ndarray, binarized: bool) -> np.ndarray:
    """The images a run is evaluated on and encoded from outside training: as they are, or, for a run
    trained on dynamically binarized pixels (`binarized`), their one fixed binarization."""
    return binarized_test_images(images_uint8) if binarized else images_uint8


def prior_draws(key: jax.Array, count: int, latent_dim: int) -> jax.Array:
    """`count` latent points from the prior N(0, I)."""
    return jax.random.normal(key, (count, latent_dim))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Probabilities (N, 784) -> uint8 images (N, 28, 28), rounded as MNIST's grey levels are."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def linear_grid_values(coords: np.ndarray, variational: bool) -> tuple[np.ndarray, np.ndarray]:
    """z values of the linear grid along the two axes of 2-d `coords`: the seed's fixed grid for a VAE;
    a plain AE has no prior, so its grid spans the bulk of its codes instead."""
    if variational:
        return SEED_GRID_VALUES, SEED_GRID_VALUES
    return code_span(coords[:, 0]), code_span(coords[:, 1])


def normal_grid_values() -> np.ndarray:
    """z values of the inverse-CDF grid along one axis."""
    return np.array([NormalDist().inv_cdf(p) for p in NORMAL_GRID_PROBABILITIES])


def code_span(codes: np.ndarray, points: int = 14) -> np.ndarray:
    """Grid values over the 1st-99th percentile of a code; a dead (constant) ReLU unit gets +-0.5."""
    low, high = np.percentile(codes, [1, 99])
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, points)


def cell_extent(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float, float]:
    """The area a grid of images covers: each image centred on its grid point."""
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    return xs[0] - dx / 2, xs[-1] + dx / 2, ys[0] - dy / 2, ys[-1] + dy / 2


def principal_plane(means: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The plane of the first two principal components of `means` (N, d), d >= 2: its center (d,),
    the components (2, d) and the share of the variance they explain."""
    center = means.mean(axis=0)
    _, singular, components = np.linalg.svd(means - center, full_matrices=False)
    return center, components[:2], float((singular[:2] ** 2).sum() / (singular**2).sum())
