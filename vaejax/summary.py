"""A Keras-style model summary: each layer, its output shape and its parameter count."""

from __future__ import annotations

import jax
from flax import linen as nn

from vaejax.models import AutoEncoder, count_params, init_params


def model_summary(model: AutoEncoder, name: str) -> str:
    """The layers with parameters, in call order, traced abstractly (no arrays are computed)."""
    rows = []

    def record(next_fun, args, kwargs, context):
        output = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and module.variables.get("params") and not _has_children(module):
            shape = (None, *output.shape[1:])
            rows.append(("/".join(module.path), type(module).__name__, shape,
                         count_params(module.variables["params"])))
        return output

    def initialise():
        with nn.intercept_methods(record):
            return init_params(model, jax.random.key(0))

    jax.eval_shape(initialise)
    lines = [f'Model: "{name}"', f"{'Layer (type)':<42}{'Output Shape':<24}{'Param #':>12}", "=" * 78]
    for path, kind, shape, count in rows:
        lines.append(f"{f'{path} ({kind})':<42}{str(shape):<24}{count:>12,}")
    lines += ["=" * 78, f"Total params: {sum(row[3] for row in rows):,}"]
    return "\n".join(lines) + "\n"


def _has_children(module: nn.Module) -> bool:
    return any(isinstance(value, dict) for value in module.variables["params"].values())
