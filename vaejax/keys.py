"""Every random key of vaejax, derived here and nowhere else.

    seed (--seed) -> root_key -> split 4: init        the params' initialisation
                                         train       the state's rng, this epoch's key; each epoch splits it once:
                                                     (next epoch's key, shuffle key, step key); step i draws
                                                     from fold_in(step key, i), binarization first
                                                     (split once more), micro-batch part j from fold_in(., j)
                                         eval        fixed; test batch b draws from fold_in(eval, b)
                                         sample      fixed: the figures' prior draws
    a command's --seed -> root_key -> split 2: vaejax.evaluate's importance draws and its samples;
                                               vaejax.generate's samples (from the first)
    an explorer request's seed -> root_key: its prior draws
    TEST_BINARIZATION_SEED -> the one binarization of a dynamically binarized test set, for every run
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax

# Dynamically binarized MNIST's test set is binarized once, with this key for every run, so that
# evaluations of different runs and seeds see the same binary images.
TEST_BINARIZATION_SEED = 0


@dataclass(frozen=True)
class SeedKeys:
    init: jax.Array
    train: jax.Array
    eval: jax.Array
    sample: jax.Array


def root_key(seed: int) -> jax.Array:
    """The key of a seed from 0 to 2^64 - 1. JAX (without x64) keeps a seed's low 32 bits only, so
    2^32 would alias 0: a seed's high 32 bits are folded into the key of its low ones. Seeds below
    2^32 give `jax.random.key(seed)` itself."""
    low, high = seed & 0xFFFFFFFF, seed >> 32
    key = jax.random.key(low)
    return jax.random.fold_in(key, high) if high else key


@functools.partial(jax.jit, static_argnums=0)
def _split_seed(seed: int) -> tuple[jax.Array, ...]:
    return tuple(jax.random.split(root_key(seed), 4))  # four outputs: no eager unstack after


def seed_keys(seed: int) -> SeedKeys:
    """Every key of a run, derived from `--seed` alone."""
    return SeedKeys(*_split_seed(seed))


def epoch_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The epoch's one split of its key: (next epoch's key, this epoch's shuffle key, its step key)."""
    next_rng, shuffle_key, step_root = jax.random.split(rng, 3)
    return next_rng, shuffle_key, step_root


def step_key(step_root: jax.Array, step: jax.Array) -> jax.Array:
    """The key of training step `step` of an epoch."""
    return jax.random.fold_in(step_root, step)


def eval_batch_key(eval_key: jax.Array, batch: jax.Array) -> jax.Array:
    """The key of test batch `batch`: the same in every epoch."""
    return jax.random.fold_in(eval_key, batch)


def part_key(key: jax.Array, part: int) -> jax.Array:
    """The key of micro-batch part `part` of a batch whose key is `key`."""
    return jax.random.fold_in(key, part)


def binarization_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the pixel draws' key, the latent draws' key) of a dynamically binarized batch."""
    binarize_key, noise_key = jax.random.split(key)
    return binarize_key, noise_key


def command_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The two keys of a command's own --seed: vaejax.evaluate draws its importance samples from the first
    and its samples from the second; vaejax.generate draws its samples from the first."""
    first, second = jax.random.split(root_key(seed))
    return first, second


def test_binarization_key() -> jax.Array:
    return jax.random.key(TEST_BINARIZATION_SEED)
