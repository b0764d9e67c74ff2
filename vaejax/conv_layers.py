"""4x4 'SAME' convolutions computed the fast way on XLA:CPU, from nn.Conv's own parameters.

XLA:CPU compiles the input gradient of a stride-2 convolution to an Eigen convolution with an lhs
dilation, about twice as slow as a stride-1 one of the same FLOPs, and every kernel gradient to a
convolution too. So here a stride-2 conv is a space-to-depth and a stride-1 2x2 conv, and a kernel
gradient can be one matmul of the input's patches with the cotangent. The function and the
parameters (a (4, 4, Ci, Co) `kernel`, a zero `bias`) are nn.Conv's / nn.ConvTranspose's, so params,
checkpoints and seeds do not change; `vaejax.models`' `conv_impl` opts in.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

Padding = tuple[tuple[int, int], tuple[int, int]]
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def correlate(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 cross-correlation of NHWC `x` with an HWIO kernel, as nn.Conv calls XLA (flax defaults)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def patches_correlate(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """`correlate`, with XLA's own forward and input gradient, but the kernel gradient as one matmul."""
    return correlate(x, kernel, padding)


def _patches_forward(x, kernel, padding):
    return correlate(x, kernel, padding), (x, kernel)


def _patches_backward(padding, residuals, cotangent):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: correlate(x, kernel, padding), x)
    kh, kw, _, out_channels = kernel.shape
    _, out_h, out_w, _ = cotangent.shape
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    # Plain slices and a concatenate: conv_general_dilated_patches is itself a (slow) grouped conv.
    patches = jnp.concatenate([padded[:, a:a + out_h, b:b + out_w] for a in range(kh) for b in range(kw)],
                              axis=-1)  # channels ordered (a, b, ci), as the HWIO kernel
    kernel_grad = patches.reshape(-1, patches.shape[-1]).T @ cotangent.reshape(-1, out_channels)
    return input_vjp(cotangent)[0], kernel_grad.reshape(kernel.shape)


patches_correlate.defvjp(_patches_forward, _patches_backward)


def space_to_depth(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2, W/2, 4C): each 2x2 block's pixel (p, q) on channels ordered (p, q, c)."""
    batch, height, width, channels = x.shape
    blocks = x.reshape(batch, height // 2, 2, width // 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(batch, height // 2, width // 2, 4 * channels)


def space_to_depth_kernel(kernel: jax.Array) -> jax.Array:
    """(4, 4, Ci, Co) -> (2, 2, 4Ci, Co): w[2a+p, 2c+q, ci] -> w2[a, c, (p, q, ci)], `space_to_depth`'s order."""
    kh, kw, in_channels, out_channels = kernel.shape
    blocks = kernel.reshape(kh // 2, 2, kw // 2, 2, in_channels, out_channels).transpose(0, 2, 1, 3, 4, 5)
    return blocks.reshape(kh // 2, kw // 2, 4 * in_channels, out_channels)


class Conv4x4(nn.Module):
    """nn.Conv(features, (4, 4), strides=(stride, stride), padding='SAME') (stride 1 or 2), or with
    `transposed` nn.ConvTranspose(features, (4, 4), padding='SAME') at stride 1: the same params and
    outputs. Stride 2 is a stride-1 2x2 conv over 2x2 blocks (even input sides only); `patches`
    computes the kernel gradient as one matmul."""

    features: int
    stride: int = 1
    transposed: bool = False
    patches: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stride not in (1, 2) or (self.transposed and self.stride != 1):
            raise ValueError(f"Conv4x4 computes stride 1 or 2 (transposed: 1), not {self.stride}")
        kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = promote_dtype(x, kernel, bias)
        conv = patches_correlate if self.patches else correlate
        if self.stride == 2:
            if x.shape[1] % 2 or x.shape[2] % 2:
                raise ValueError(f"a space-to-depth stride-2 conv needs even input sides, got {x.shape[1:3]}")
            # 'SAME' for an even side, kernel 4, stride 2: 2 pixels of padding, 1 before and 1 after
            blocks = space_to_depth(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
            y = conv(blocks, space_to_depth_kernel(kernel), ((0, 0), (0, 0)))
        else:
            # 'SAME' pads 3: nn.Conv puts the odd pixel after, nn.ConvTranspose (its adjoint) before
            pads = (2, 1) if self.transposed else (1, 2)
            y = conv(x, kernel, (pads, pads))
        return y + bias
