"""Apply a compiled function to many rows in batches of one shape."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


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
