"""The models as pure Flax Linen modules (the two seed architectures, the conditional one, the IWAE
paper's MLP), and their functional face: build, init, encode, decode, reparameterize.

Every model maps float images in [0, 1] of shape (B, 28, 28, 1) to pixel *logits* of shape (B, 784):
the loss takes logits (stable BCE) and a sigmoid is applied only to draw pictures. Encoders return
`(latent_mean, latent_std)`; a plain autoencoder has no std and returns `None` there.

A conditional model (`conv_cvae`) also takes class labels: their one-hot vector is joined to the
encoder's dense input and to the decoder's input, so the decoder can be asked for a given class.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from vaejax.conv_layers import Conv4x4
from vaejax.data import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES

# TF1's tf.layers and Keras both initialise kernels glorot-uniform with zero biases; matching them
# keeps the comparison with the seeds' figures fair (Flax's own default is lecun-normal).
kernel_init = nn.initializers.glorot_uniform()


def dense(features: int, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=kernel_init, name=name)


# How the conv models' 4x4 convs are computed (vaejax.conv_layers), one function from the same params:
# "xla" as flax computes them, "space_to_depth" rewrites the stride-2 convs, "patches" the stride-1
# convs' kernel gradients, "both" does both.
CONV_IMPLS = ("xla", "space_to_depth", "patches", "both")


def conv(features: int, stride: int, conv_impl: str = "xla", name: str | None = None) -> nn.Module:
    patches = conv_impl in ("patches", "both")
    if (stride == 2 and conv_impl in ("space_to_depth", "both")) or (stride == 1 and patches):
        return Conv4x4(features, stride, patches=patches, kernel_init=kernel_init, name=name)
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding="SAME", kernel_init=kernel_init, name=name)


def conv_transpose(features: int, conv_impl: str = "xla", name: str | None = None) -> nn.Module:
    if conv_impl in ("patches", "both"):
        return Conv4x4(features, transposed=True, patches=True, kernel_init=kernel_init, name=name)
    return nn.ConvTranspose(features, (4, 4), strides=(1, 1), padding="SAME", kernel_init=kernel_init, name=name)


def images_to_float(images_uint8: jax.Array) -> jax.Array:
    """uint8 (B, 28, 28) -> float32 (B, 28, 28, 1) in [0, 1]; done inside compiled code."""
    return (jnp.asarray(images_uint8).astype(jnp.float32) / 255.0)[..., None]


def join_condition(features: jax.Array, condition: jax.Array | None) -> jax.Array:
    """Append the one-hot class vector to flat features, when the model is conditional."""
    return features if condition is None else jnp.concatenate([features, condition], axis=-1)


def reparameterize(key: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """z = mean + std * eps with eps ~ N(0, I) drawn from an explicit key."""
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


class ConvEncoder(nn.Module):
    """Seed 000: three 4x4 convs (strides 2, 2, 1), then a dense mean and a softplus std."""

    latent_dim: int
    conv_impl: str = "xla"
    variational: ClassVar[bool] = True

    @nn.compact
    def __call__(self, images: jax.Array, condition: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        x = images
        for index, stride in enumerate((2, 2, 1)):  # named as flax names nn.Conv, whatever the class
            x = nn.relu(conv(64, stride, self.conv_impl, name=f"Conv_{index}")(x))
        x = join_condition(x.reshape((x.shape[0], -1)), condition)
        mean = dense(self.latent_dim, name="mean")(x)
        std = nn.softplus(dense(self.latent_dim, name="std")(x))  # softplus keeps std > 0
        return mean, std


class ConvDecoder(nn.Module):
    """Seed 000: two dense layers, reshape to a square, three 4x4 transposed convs, two dense."""

    inputs_decoder: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, z: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        side = math.isqrt(self.inputs_decoder)
        x = join_condition(z, condition)
        for _ in range(2):
            x = nn.relu(dense(self.inputs_decoder)(x))
        x = x.reshape((x.shape[0], side, side, 1))
        for index in range(3):
            x = nn.relu(conv_transpose(64, self.conv_impl, name=f"ConvTranspose_{index}")(x))
        x = x.reshape((x.shape[0], -1))
        x = dense(IMAGE_PIXELS)(x)  # the seed stacks two linear layers here; kept for fidelity
        return dense(IMAGE_PIXELS)(x)


class DenseEncoder(nn.Module):
    """Seed 003: 784 -> 32 (ReLU) -> latent (ReLU)."""

    latent_dim: int
    variational: ClassVar[bool] = False

    @nn.compact
    def __call__(self, images: jax.Array, condition: jax.Array | None = None) -> tuple[jax.Array, None]:
        x = join_condition(images.reshape((images.shape[0], -1)), condition)
        x = nn.relu(dense(32)(x))
        return nn.relu(dense(self.latent_dim)(x)), None


class DenseDecoder(nn.Module):
    """Seed 003: latent -> 32 (ReLU) -> 784 (logits; the seed's sigmoid lives in the loss)."""

    @nn.compact
    def __call__(self, z: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        hidden = nn.relu(dense(32)(join_condition(z, condition)))
        return dense(IMAGE_PIXELS)(hidden)


class MLPEncoder(nn.Module):
    """Burda et al.'s IWAE encoder: 784 -> 200 -> 200 (tanh) -> a dense mean and a softplus std."""

    latent_dim: int
    hidden: int = 200
    variational: ClassVar[bool] = True

    @nn.compact
    def __call__(self, images: jax.Array, condition: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        x = join_condition(images.reshape((images.shape[0], -1)), condition)
        for _ in range(2):
            x = nn.tanh(dense(self.hidden)(x))
        mean = dense(self.latent_dim, name="mean")(x)
        std = nn.softplus(dense(self.latent_dim, name="std")(x))
        return mean, std


class MLPDecoder(nn.Module):
    """Burda et al.'s IWAE decoder: latent -> 200 -> 200 (tanh) -> 784 logits."""

    hidden: int = 200

    @nn.compact
    def __call__(self, z: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        x = join_condition(z, condition)
        for _ in range(2):
            x = nn.tanh(dense(self.hidden)(x))
        return dense(IMAGE_PIXELS)(x)


class AutoEncoder(nn.Module):
    """An encoder and a decoder; variational when the encoder returns a std.

    `__call__(images, key, labels)` returns `(logits, mean, std)`: for a VAE the decoder sees a sample
    drawn with `key`, for a plain autoencoder it sees the code itself and `key` is unused. With
    `num_classes` > 0 the model is conditional and `labels` (integers, (B,)) are required; otherwise
    they are ignored.
    """

    encoder: nn.Module
    decoder: nn.Module
    num_classes: int = 0

    def __call__(self, images: jax.Array, key: jax.Array, labels: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        mean, std = self.encode(images, labels)
        z = mean if std is None else reparameterize(key, mean, std)
        return self.decode(z, labels), mean, std

    @property
    def variational(self) -> bool:
        return self.encoder.variational

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def condition(self, labels: jax.Array | None) -> jax.Array | None:
        """Integer labels (B,) as one-hot vectors; class weights (B, C) (e.g. a blend) pass as they are."""
        if not self.conditional:
            return None
        if labels is None:
            raise ValueError("a conditional model needs class labels")
        return labels if labels.ndim == 2 else jax.nn.one_hot(labels, self.num_classes)

    def encode(self, images: jax.Array, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        return self.encoder(images, self.condition(labels))

    def decode(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        return self.decoder(z, self.condition(labels))


def build_model(name: str, latent_dim: int, inputs_decoder: int = 49, conv_impl: str = "xla") -> AutoEncoder:
    """`conv_vae` (seed 000), `conv_cvae` (seed 000 conditioned on the class), `dense_ae` (seed 003)
    or `mlp_vae` (the IWAE paper's one-stochastic-layer model). `conv_impl` (one of CONV_IMPLS) says
    how the conv models' convs are computed; the dense models have none."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; one of {CONV_IMPLS}")
    if name == "conv_vae":
        return AutoEncoder(ConvEncoder(latent_dim, conv_impl), ConvDecoder(inputs_decoder, conv_impl))
    if name == "conv_cvae":
        return AutoEncoder(ConvEncoder(latent_dim, conv_impl), ConvDecoder(inputs_decoder, conv_impl),
                           num_classes=NUM_CLASSES)
    if name == "dense_ae":
        return AutoEncoder(DenseEncoder(latent_dim), DenseDecoder())
    if name == "mlp_vae":
        return AutoEncoder(MLPEncoder(latent_dim), MLPDecoder())
    raise ValueError(f"unknown model {name!r}")


def init_params(model: AutoEncoder, key: jax.Array) -> dict:
    """Initialise every parameter from `key` (the decoder is reached through `__call__`)."""
    params_key, sample_key = jax.random.split(key)
    images = jnp.zeros((1, IMAGE_SIDE, IMAGE_SIDE, 1), jnp.float32)
    return model.init(params_key, images, sample_key, jnp.zeros((1,), jnp.int32))["params"]


def activation_bytes_per_image(model: AutoEncoder) -> int:
    """Bytes of every layer's output for one image in a forward pass, from shapes alone (nothing is
    computed): what a batch's memory grows by per image."""

    def forward(images):
        params = init_params(model, jax.random.key(0))
        labels = jnp.zeros((1,), jnp.int32)
        _, state = model.apply({"params": params}, images, jax.random.key(0), labels,
                               capture_intermediates=True, mutable=["intermediates"])
        return state

    outputs = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, IMAGE_SIDE, IMAGE_SIDE, 1), jnp.float32))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(outputs))


def count_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def encode(model: AutoEncoder, params, images: jax.Array, labels: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array | None]:
    """Float images (B, 28, 28, 1) in [0, 1] -> latent (mean, std); std is None for a plain AE.
    `labels` (B,) are needed by a conditional model only."""
    return model.apply({"params": params}, images, labels, method=AutoEncoder.encode)


def decode(model: AutoEncoder, params, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Latent points (B, latent_dim) -> pixel logits (B, 784); apply a sigmoid to draw them.
    `labels` (B,) choose the class of a conditional model's images."""
    return model.apply({"params": params}, z, labels, method=AutoEncoder.decode)
