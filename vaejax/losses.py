"""The objective as small pure functions: BCE from logits, Gaussian KL, their batch mean, the
importance-weighted bound on the log-likelihood (evaluation), and the training objectives that
draw several samples per image (K-draw ELBO, IWAE, DReG), and the beta-VAE's KL weight."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vaejax.models import reparameterize


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
    bce_mean, kl_mean = weighted_mean(bce, weights), weighted_mean(kl, weights)
    return {"loss": bce_mean + kl_mean, "bce": bce_mean, "kl": kl_mean}


def weighted_mean(per_image: jax.Array, weights: jax.Array) -> jax.Array:
    """The mean over the real images of a batch (weight 1; padding has weight 0)."""
    return jnp.sum(per_image * weights) / jnp.maximum(weights.sum(), 1.0)


def gaussian_log_density(z: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """log N(z; mean, diag(std^2)), summed over the last axis."""
    return -0.5 * jnp.sum(((z - mean) / std) ** 2 + 2.0 * jnp.log(std) + jnp.log(2.0 * jnp.pi), axis=-1)


def log_weights(decode_logits: Callable[[jax.Array], jax.Array], targets: jax.Array, z: jax.Array,
                mean: jax.Array, std: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log w = log p(x|z) + log p(z) - log q(z|x) and log p(x|z), both (K, B), for draws `z` (K, B, d)
    of the B images `targets` (B, P) under q = N(`mean`, `std`^2) (B, d)."""
    samples, batch = z.shape[:2]
    logits = decode_logits(z.reshape(samples * batch, -1))
    log_likelihood = -bce_from_logits(logits, jnp.tile(targets, (samples, 1))).reshape(samples, batch)
    prior = gaussian_log_density(z, jnp.zeros_like(z), jnp.ones_like(z))
    return log_likelihood + prior - gaussian_log_density(z, mean, std), log_likelihood


def drawn_log_weights(
    decode_logits: Callable[[jax.Array], jax.Array],
    targets: jax.Array,
    mean: jax.Array,
    std: jax.Array,
    key: jax.Array,
    samples: int,
    chunk: int,
) -> tuple[jax.Array, jax.Array]:
    """log w = log p(x|z) + log p(z) - log q(z|x) for `samples` draws z ~ q(z|x) per image.

    `decode_logits` maps latents (N, d) to pixel logits (N, P); `targets` (B, P) are the pixels,
    `mean`, `std` (B, d) the encoder's q. The draws are made `chunk` at a time (memory stays at
    chunk * B decodes). Returns (log_weights, log_likelihoods), both (B, samples).
    """
    if samples % chunk:
        raise ValueError(f"samples ({samples}) must be a multiple of chunk ({chunk})")
    batch = targets.shape[0]

    def one_chunk(chunk_key):
        z = reparameterize(chunk_key, jnp.broadcast_to(mean, (chunk, *mean.shape)), std)  # (chunk, B, d)
        return log_weights(decode_logits, targets, z, mean, std)

    log_w, log_likelihoods = jax.lax.map(one_chunk, jax.random.split(key, samples // chunk))
    return (log_w.reshape(samples, batch).T, log_likelihoods.reshape(samples, batch).T)


def iwae_bound(log_weights: jax.Array) -> jax.Array:
    """Burda et al.'s k-sample bound on log p(x): log (1/k) sum_i w_i, by log-sum-exp over the last axis.

    By Jensen it is never below the mean of the same log weights (the 1-sample ELBO estimate), and
    its expectation rises towards log p(x) as k grows.
    """
    return jax.nn.logsumexp(log_weights, axis=-1) - jnp.log(log_weights.shape[-1])


def importance_terms(decode_logits: Callable[[jax.Array], jax.Array], targets: jax.Array, mean: jax.Array,
                     std: jax.Array, weights: jax.Array, key: jax.Array, objective: str, samples: int
                     ) -> dict[str, jax.Array]:
    """The weighted batch means of `objective`'s loss over `samples` draws per image, and of the draws'
    BCE and the analytic KL (reported beside it). `elbo`: the draws' mean BCE plus the analytic KL;
    `iwae`: Burda et al.'s bound; `dreg`: its value with Tucker et al.'s doubly reparameterised
    gradient for the encoder (lower variance).

    `decode_logits` maps latents (K * B, d) to logits; `targets` (B, P) are the pixels, `mean` and
    `std` (B, d) the encoder's q.
    """
    z = reparameterize(key, jnp.broadcast_to(mean, (samples, *mean.shape)), std)  # (K, B, d)

    def weights_at(z, q_mean, q_std):
        return log_weights(decode_logits, targets, z, q_mean, q_std)

    def batch_mean(per_image):
        return weighted_mean(per_image, weights)

    kl = batch_mean(gaussian_kl(mean, std))
    if objective == "elbo":
        _, log_likelihood = weights_at(z, mean, std)
        bce = batch_mean(-log_likelihood.mean(axis=0))
        return {"loss": bce + kl, "bce": bce, "kl": kl}
    if objective == "iwae":
        log_w, log_likelihood = weights_at(z, mean, std)
        loss = batch_mean(-iwae_bound(log_w.T))
        return {"loss": loss, "bce": batch_mean(-log_likelihood.mean(axis=0)), "kl": kl}
    # DReG: q's parameters enter log w only through z; the decoder gets the IWAE gradient (weights
    # w~), the encoder the squared weights w~^2 along z. Scaling z's gradient by w~ (z's value is
    # unchanged) and weighting log w by w~ gives both from one surrogate.
    frozen_z, frozen_mean, frozen_std = (jax.lax.stop_gradient(array) for array in (z, mean, std))
    log_w, log_likelihood = weights_at(frozen_z, frozen_mean, frozen_std)
    normalized = jax.lax.stop_gradient(jax.nn.softmax(log_w, axis=0))  # w~, (K, B)
    value = batch_mean(-iwae_bound(log_w.T))
    scaled_z = frozen_z + normalized[..., None] * (z - frozen_z)
    surrogate = batch_mean(-jnp.sum(normalized * weights_at(scaled_z, frozen_mean, frozen_std)[0], axis=0))
    loss = jax.lax.stop_gradient(value) + (surrogate - jax.lax.stop_gradient(surrogate))  # value: the bound's
    return {"loss": loss, "bce": batch_mean(-log_likelihood.mean(axis=0)), "kl": kl}


def kl_weighted(terms: dict[str, jax.Array], beta: float) -> dict[str, jax.Array]:
    """An ELBO's terms with the loss BCE + beta * KL (Higgins et al.'s beta-VAE); BCE and KL as they were."""
    return terms | {"loss": terms["bce"] + beta * terms["kl"]}
