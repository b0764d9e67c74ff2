"""The optimizer recipes: the seeds' Adam at a constant rate, and the IWAE paper's schedule."""

from __future__ import annotations

import jax.numpy as jnp
import optax

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
