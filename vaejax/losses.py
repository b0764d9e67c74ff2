"""The objective as small pure functions: BCE from logits, Gaussian KL, and their batch mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bce_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary cross-entropy summed over pixels, per image, in nats.

    softplus(l) - t * l equals -t log sigmoid(l) - (1 - t) log(1 - sigmoid(l)) but never takes the
    log of a rounded-to-zero probability, so it stays finite for any logit.
    """
    per_pixel = jax.nn.softplus(logits) - targets * logits
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=-1)


def gaussian_kl(mean: jax.Array, std: jax.Array) -> jax.Array:
    """KL(N(mean, std^2) || N(0, I)) per image, summed over latent dimensions."""
    return 0.5 * jnp.sum(mean**2 + std**2 - 2.0 * jnp.log(std) - 1.0, axis=-1)


def loss_terms(
    logits: jax.Array,
    images: jax.Array,
    mean: jax.Array,
    std: jax.Array | None,
    weights: jax.Array,
) -> dict[str, jax.Array]:
    """Weighted batch means of the per-image BCE, KL (zero for a plain AE) and their sum.

    `weights` is 1 for real images and 0 for padding, so a short last batch is averaged over its real
    images only and every batch has one shape (one compile).
    """
    bce = bce_from_logits(logits, images)
    kl = jnp.zeros_like(bce) if std is None else gaussian_kl(mean, std)
    count = jnp.maximum(weights.sum(), 1.0)
    bce_mean = jnp.sum(bce * weights) / count
    kl_mean = jnp.sum(kl * weights) / count
    return {"loss": bce_mean + kl_mean, "bce": bce_mean, "kl": kl_mean}
