"""vaejax.conv_layers: each rewrite computes what flax's layer computes, from the same params, and so
does the whole conv model built with it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import batch_gradient
from test_seed_fidelity import LATENT_DIM, assert_close, conv_vae_decode, conv_vae_encode, float64, random_params

from vaejax.conv_layers import Conv4x4
from vaejax.models import build_model, conv, conv_transpose, decode, encode, init_params

REWRITES = ["space_to_depth", "patches", "both"]


def assert_float32_equal(actual, expected):
    """Equal to float32 rounding: relative 1e-5, or 1e-5 of the largest expected magnitude."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def layer(kind: str, stride: int, conv_impl: str):
    return conv(64, stride, conv_impl) if kind == "conv" else conv_transpose(64, conv_impl)


# conv_vae's conv layers at their input shapes, and the rewrites that change each one
LAYERS = [("conv", 2, (3, 28, 28, 1), "space_to_depth"), ("conv", 2, (3, 28, 28, 1), "both"),
          ("conv", 2, (3, 14, 14, 64), "space_to_depth"), ("conv", 2, (3, 14, 14, 64), "both"),
          ("conv", 1, (3, 7, 7, 64), "patches"), ("conv", 1, (3, 7, 7, 64), "both"),
          ("conv_transpose", 1, (3, 7, 7, 1), "patches"), ("conv_transpose", 1, (3, 7, 7, 64), "both")]


@pytest.mark.parametrize(("kind", "stride", "shape", "conv_impl"), LAYERS)
def test_rewritten_layer_is_the_flax_layer(kind, stride, shape, conv_impl):
    """Outputs, and the gradients of a scalar loss with respect to the inputs and to every param."""
    plain, rewritten = layer(kind, stride, "xla"), layer(kind, stride, conv_impl)
    assert isinstance(rewritten, Conv4x4)
    inputs_key, params_key, bias_key, cotangent_key = jax.random.split(jax.random.key(0), 4)
    inputs = jax.random.normal(inputs_key, shape)
    params = plain.init(params_key, inputs)["params"]
    assert jax.tree.map(jnp.shape, rewritten.init(params_key, inputs)["params"]) == jax.tree.map(jnp.shape, params)
    params["bias"] = jax.random.normal(bias_key, params["bias"].shape)  # a bias that counts
    cotangent = jax.random.normal(cotangent_key, plain.apply({"params": params}, inputs).shape)

    def outputs_and_gradients(module):
        def loss(params, inputs):
            outputs = module.apply({"params": params}, inputs)
            return jnp.sum(outputs * cotangent), outputs

        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, inputs)

    (expected_grads, expected_outputs), (actual_grads, actual_outputs) = map(outputs_and_gradients, (plain, rewritten))
    assert_float32_equal(actual_outputs, expected_outputs)
    jax.tree.map(assert_float32_equal, actual_grads, expected_grads)


def test_space_to_depth_needs_even_sides():
    with pytest.raises(ValueError, match="even input sides"):
        conv(64, 2, "space_to_depth").init(jax.random.key(0), jnp.zeros((1, 7, 7, 64)))


def test_unknown_conv_impl_is_refused():
    with pytest.raises(ValueError, match="unknown conv_impl"):
        build_model("conv_vae", 2, conv_impl="fast")


@functools.cache
def model_gradient(name: str, conv_impl: str):
    """Params from key 1, and the batch loss' gradient and terms on four images (each computed once)."""
    model = build_model(name, LATENT_DIM, conv_impl=conv_impl)
    params = init_params(model, jax.random.key(1))
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    labels, weights = np.arange(4, dtype=np.int32), np.ones(4, np.float32)
    gradient = jax.jit(lambda params: batch_gradient(model, params, images, labels, weights, jax.random.key(3)))
    return params, *gradient(params)


@pytest.mark.parametrize("name", ["conv_vae", "conv_cvae"])
@pytest.mark.parametrize("conv_impl", REWRITES)
def test_rewritten_model_is_the_flax_model(name, conv_impl):
    """The same param tree (paths, shapes, values) from the same key, and the same batch loss and gradient."""
    expected_params, expected_grads, expected_terms = model_gradient(name, "xla")
    actual_params, actual_grads, actual_terms = model_gradient(name, conv_impl)
    jax.tree.map(np.testing.assert_array_equal, actual_params, expected_params)
    jax.tree.map(assert_float32_equal, actual_terms, expected_terms)
    jax.tree.map(assert_float32_equal, actual_grads, expected_grads)


def test_rewritten_forward_pass_is_the_seed_network():
    """conv_impl='both' against test_seed_fidelity's NumPy float64 seed 000 network."""
    model = build_model("conv_vae", LATENT_DIM, conv_impl="both")
    params = random_params(model, seed=1)
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
    z = rng.normal(size=(3, LATENT_DIM)).astype(np.float32)
    (mean, std), logits = jax.jit(lambda params: (encode(model, params, images), decode(model, params, z)))(params)
    hand_mean, hand_std = conv_vae_encode(float64(params), float64(images))
    assert_close(mean, hand_mean)
    assert_close(std, hand_std)
    assert_close(logits, conv_vae_decode(float64(params), float64(z)))
