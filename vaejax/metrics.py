"""Image and sample-quality metrics as pure functions: MSE, PSNR, SSIM, Frechet distance, and the
confidence and class spread of a classifier's predictions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Wang et al. (2004): an 11x11 Gaussian window of std 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error per image over (B, ...) arrays."""
    return jnp.mean(((predictions - targets) ** 2).reshape(predictions.shape[0], -1), axis=-1)


def psnr(predictions: jax.Array, targets: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio per image in dB: 10 log10(range^2 / MSE)."""
    return 10.0 * jnp.log10(data_range**2 / mse(predictions, targets))


def _window_matrix(side: int) -> jax.Array:
    """(side - 10, side): each row the normalised 1-d Gaussian window at one 'valid' position."""
    offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    window = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    window /= window.sum()
    rows = side - SSIM_WINDOW + 1
    matrix = np.zeros((rows, side), np.float32)
    for row in range(rows):
        matrix[row, row:row + SSIM_WINDOW] = window
    return jnp.asarray(matrix)


def ssim(predictions: jax.Array, targets: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Mean structural similarity per image of (B, H, W) arrays, as Wang et al. define it.

    Local statistics use the separable Gaussian window at every position where it fits whole
    ('valid'), with population (not sample) variances: the settings of scikit-image's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
    """
    rows, columns = _window_matrix(predictions.shape[1]), _window_matrix(predictions.shape[2])

    def local_mean(x):  # full float32: E[x^2] - E[x]^2 below cancels, TF32 (a GPU's default) is far too coarse
        highest = jax.lax.Precision.HIGHEST
        return jnp.matmul(jnp.matmul(rows, x, precision=highest), columns.T, precision=highest)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mean_p, mean_t = local_mean(predictions), local_mean(targets)
    var_p = local_mean(predictions * predictions) - mean_p**2
    var_t = local_mean(targets * targets) - mean_t**2
    covariance = local_mean(predictions * targets) - mean_p * mean_t
    similarity = ((2 * mean_p * mean_t + c1) * (2 * covariance + c2)) / (
        (mean_p**2 + mean_t**2 + c1) * (var_p + var_t + c2)
    )
    return similarity.mean(axis=(1, 2))


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of feature rows."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance between two Gaussians: |m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    tr (C_a C_b)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
    S C_b S with S = C_a^(1/2) (same spectrum as C_a C_b), which avoids a non-symmetric sqrtm.
    """
    (mean_a, cov_a), (mean_b, cov_b) = stats_a, stats_b
    eigenvalues, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T
    product = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(product, 0, None)).sum()
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def prediction_statistics(probabilities: np.ndarray) -> dict[str, float]:
    """Of a classifier's class probabilities (N, C): the mean confidence (top probability) and the
    entropy in nats of the predicted-class distribution (log C when every class is equally common)."""
    probabilities = np.asarray(probabilities, np.float64)
    counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    shares = counts / counts.sum()
    nonzero = shares[shares > 0]
    return {
        "mean_confidence": float(probabilities.max(axis=1).mean()),
        "class_entropy": float(-(nonzero * np.log(nonzero)).sum()),
    }
