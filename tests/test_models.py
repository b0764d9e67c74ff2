import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax.models import build_model, count_params, decode, encode, init_params, reparameterize


@pytest.mark.parametrize(("name", "expected"), [("conv_vae", 3_354_569), ("dense_ae", 51_154)])
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
