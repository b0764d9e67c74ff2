"""Batches of one shape: how many an epoch has, which rows batch i holds (padded, with its weights), and a
compiled function applied to many rows in batches."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SET_BATCH = 1000  # rows per compiled call when a whole set is evaluated, encoded, decoded or classified


def num_batches(count: int, batch_size: int) -> int:
    return -(-count // batch_size)


def batch_indices(order: jax.Array, step: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Indices of batch `step` in `order`, padded to `batch_size`, and 1/0 weights marking real ones."""
    positions = step * batch_size + jnp.arange(batch_size)
    count = order.shape[0]
    weights = (positions < count).astype(jnp.float32)
    return order[jnp.minimum(positions, count - 1)], weights


def map_batches(function: Callable, arrays: tuple, batch_size: int, pass_batch_index: bool = False):
    """`function(*batch_arrays)` over `arrays` (same length) in batches, its per-row outputs (any tree
    of arrays) concatenated as NumPy arrays.

    Every batch has one shape, so a compiled `function` compiles once: the last batch is padded by
    repeating its final row, and the padding is dropped from the outputs. Fewer rows than
    `batch_size` make one batch of just those rows. With `pass_batch_index` the batch's index is
    passed last (e.g. to fold into a key).
    """
    count = len(arrays[0])
    size = min(batch_size, count)
    outputs = []
    for batch, start in enumerate(range(0, count, size)):
        indices = np.minimum(np.arange(start, start + size), count - 1)
        extra = (jnp.int32(batch),) if pass_batch_index else ()
        result = function(*(array[indices] for array in arrays), *extra)
        real = min(size, count - start)
        outputs.append(jax.tree.map(lambda values, real=real: np.asarray(values)[:real], result))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
