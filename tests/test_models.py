import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax.inference import binarize_pixels, binarized_test_images
from vaejax.models import (
    build_model,
    count_params,
    decode,
    encode,
    init_params,
    reparameterize,
)


# conv_cvae: conv_vae plus the one-hot's 10 inputs to the mean and std layers (2 x 10 x 2) and to the
# decoder's first dense layer (10 x 49).
@pytest.mark.parametrize(("name", "expected"), [("conv_vae", 3_354_569), ("dense_ae", 51_154),
                                                ("conv_cvae", 3_354_569 + 40 + 490)])
def test_parameter_counts_match_the_seeds(name, expected):
    params = init_params(build_model(name, latent_dim=2, inputs_decoder=49), jax.random.key(0))
    assert count_params(params) == expected


def test_dense_ae_layers_are_the_keras_summary():
    params = init_params(build_model("dense_ae", 2), jax.random.key(0))
    per_layer = sorted(kernel["kernel"].size + kernel["bias"].size
                       for part in params.values() for kernel in part.values())
    assert per_layer == sorted([25120, 66, 96, 25872])


@pytest.mark.parametrize("name", ["conv_vae", "dense_ae"])
def test_keras_initialisation_glorot_uniform_kernels_zero_biases(name):
    params = init_params(build_model(name, 2), jax.random.key(1))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key == "bias":
            assert not np.any(leaf)
        else:
            receptive = int(np.prod(leaf.shape[:-2]))
            limit = np.sqrt(6.0 / (receptive * (leaf.shape[-2] + leaf.shape[-1])))
            assert np.abs(leaf).max() <= limit
            assert np.abs(leaf).max() > 0.9 * limit  # uniform over the whole range, not a narrow normal


@pytest.mark.parametrize(("name", "latent_dim"), [("conv_vae", 2), ("conv_vae", 5), ("dense_ae", 3)])
def test_encoder_and_decoder_work_on_their_own(name, latent_dim):
    model = build_model(name, latent_dim, inputs_decoder=64)
    params = init_params(model, jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (7, 28, 28, 1))
    mean, std = encode(model, params, images)
    assert mean.shape == (7, latent_dim)
    if model.variational:
        assert std.shape == (7, latent_dim) and bool(jnp.all(std > 0))
    else:
        assert std is None and bool(jnp.all(mean >= 0))  # the seed's ReLU on the code
    logits = decode(model, params, jnp.zeros((4, latent_dim)))
    assert logits.shape == (4, 784)
    full_logits, full_mean, _ = model.apply({"params": params}, images, jax.random.key(2))
    np.testing.assert_array_equal(full_mean, mean)
    assert full_logits.shape == (7, 784)


def test_reparameterize_uses_only_the_key():
    mean, std = jnp.array([[1.0, -2.0]]), jnp.array([[0.5, 2.0]])
    first = reparameterize(jax.random.key(3), mean, std)
    np.testing.assert_array_equal(first, reparameterize(jax.random.key(3), mean, std))
    assert not np.array_equal(first, reparameterize(jax.random.key(4), mean, std))
    eps = jax.random.normal(jax.random.key(3), (1, 2))
    np.testing.assert_allclose(first, mean + std * eps, rtol=1e-6)


def test_autoencoder_ignores_the_key():
    model = build_model("dense_ae", 2)
    params = init_params(model, jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    first = model.apply({"params": params}, images, jax.random.key(5))[0]
    np.testing.assert_array_equal(first, model.apply({"params": params}, images, jax.random.key(6))[0])


def test_conditional_decoder_draws_the_class_it_is_given():
    model = build_model("conv_cvae", 2)
    params = init_params(model, jax.random.key(0))
    z = jnp.zeros((2, 2))
    by_label = [decode(model, params, z, jnp.array([label, label])) for label in (3, 7)]
    assert not np.allclose(by_label[0], by_label[1])
    np.testing.assert_array_equal(by_label[0], decode(model, params, z, jax.nn.one_hot(jnp.array([3, 3]), 10)))
    images = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    means = [encode(model, params, images, jnp.array([label, label]))[0] for label in (3, 7)]
    assert not np.allclose(means[0], means[1])
    with pytest.raises(ValueError, match="needs class labels"):
        decode(model, params, z)


def test_binarization_draws_pixels_with_their_intensity_as_probability():
    intensities = jnp.linspace(0.0, 1.0, 11)
    draws = binarize_pixels(jax.random.key(0), jnp.tile(intensities, (20000, 1)))
    assert set(np.unique(draws).tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(draws.mean(axis=0), intensities, atol=0.015)


def test_the_test_set_is_binarized_once_the_same_way(mnist):
    first, second = (binarized_test_images(mnist.test_images[:50]) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.uint8 and set(np.unique(first).tolist()) == {0, 255}
    assert abs(first.mean() - mnist.test_images[:50].mean()) < 2.0
