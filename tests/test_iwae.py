"""Importance-weighted training: the IWAE bound, the DReG gradient, the IWAE paper's model and schedule."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaejax.checkpoint import load_finished_run
from vaejax.config import Config
from vaejax.data import IMAGE_PIXELS
from vaejax.inference import METRIC_PRECISION
from vaejax.losses import gaussian_kl, gaussian_log_density, importance_terms
from vaejax.models import AutoEncoder, MLPDecoder, MLPEncoder, build_model, count_params, decode, encode, init_params
from vaejax.optimizers import iwae_learning_rate, make_optimizer
from vaejax.steps import LossSpec
from vaejax.training import train


@pytest.fixture(autouse=True)
def full_float32():
    """Exact comparisons on every backend (a GPU's default float32 matmul is TF32)."""
    with jax.default_matmul_precision(METRIC_PRECISION):
        yield


@pytest.fixture(scope="module")
def tiny_vae(small_mnist):
    """A small MLP VAE, trained a little so its posterior is not the prior, on 4 images."""
    model = AutoEncoder(MLPEncoder(2, hidden=16), MLPDecoder(hidden=16))
    params = init_params(model, jax.random.key(0))
    images = jnp.asarray(small_mnist.train_images[:4], jnp.float32)[..., None] / 255.0
    return model, params, images


def terms(model, params, images, key, objective):
    mean, std = encode(model, params, images)
    targets = images.reshape(-1, IMAGE_PIXELS)
    return importance_terms(lambda z: decode(model, params, z), targets, mean, std, jnp.ones(len(images)), key,
                            objective.objective, objective.samples)


def test_the_paper_model_has_the_paper_s_shape():
    model = build_model("mlp_vae", 50)
    assert count_params(init_params(model, jax.random.key(0))) == 425_284  # 784-200-200-50, mirrored


def test_iwae_at_one_draw_is_the_one_draw_elbo_and_matches_the_analytic_elbo_on_average(tiny_vae):
    model, params, images = tiny_vae
    key = jax.random.key(3)
    iwae = terms(model, params, images, key, LossSpec("iwae", 1))
    mean, std = encode(model, params, images)
    z = mean + std * jax.random.normal(key, (1, *mean.shape))[0]
    log_likelihood = -terms(model, params, images, key, LossSpec("elbo", 1))["bce"]
    log_w = (gaussian_log_density(z, 0 * z, 0 * z + 1) - gaussian_log_density(z, mean, std)).mean()
    np.testing.assert_allclose(iwae["loss"], -(log_likelihood + log_w), rtol=1e-5)
    keys = jax.random.split(jax.random.key(4), 4000)
    draws = jax.vmap(lambda key: terms(model, params, images, key, LossSpec("iwae", 1))["loss"])(keys)
    analytic = terms(model, params, images, key, LossSpec("elbo", 1))
    np.testing.assert_allclose(analytic["kl"], gaussian_kl(mean, std).mean(), rtol=1e-6)
    elbo = jax.vmap(lambda key: terms(model, params, images, key, LossSpec("elbo", 1))["loss"])(keys)
    standard_error = draws.std() / np.sqrt(len(keys))
    assert abs(draws.mean() - elbo.mean()) < 4 * standard_error


def test_the_bound_tightens_as_draws_grow(tiny_vae):
    model, params, images = tiny_vae
    keys = jax.random.split(jax.random.key(5), 100)
    losses = [float(jax.vmap(lambda key, k=k: terms(model, params, images, key, LossSpec("iwae", k))["loss"])(
        keys).mean()) for k in (1, 5, 50)]
    assert losses[0] > losses[1] > losses[2]  # -bound falls: the bound rises towards log p(x)


def gradients(model, params, images, keys, objective):
    def loss(params, key):
        return terms(model, params, images, key, objective)["loss"]

    return jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, keys)


def test_dreg_gradient_is_the_iwae_gradient_in_expectation(tiny_vae):
    model, params, images = tiny_vae
    keys = jax.random.split(jax.random.key(6), 1500)
    iwae = gradients(model, params, images, keys, LossSpec("iwae", 10))
    dreg = gradients(model, params, images, keys, LossSpec("dreg", 10))
    for part in ("encoder", "decoder"):
        plain, doubly = (jax.tree.leaves(grads["params"][part] if "params" in grads else grads[part])
                         for grads in (iwae, dreg))
        for a, b in zip(plain, doubly, strict=True):
            a, b = np.asarray(a).reshape(len(keys), -1), np.asarray(b).reshape(len(keys), -1)
            spread = np.sqrt(a.var(axis=0) / len(keys) + b.var(axis=0) / len(keys))
            assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) <= 5 * spread + 1e-6), part
            if part == "decoder":  # the decoder's gradient is IWAE's own, draw by draw
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_iwae_schedule_runs_3_to_the_i_epochs_per_rate():
    rate = iwae_learning_rate(1e-3, steps_per_epoch=10)
    block_starts = [0, 1, 4, 13, 40, 121, 364, 1093]
    for block, start in enumerate(block_starts):
        np.testing.assert_allclose(float(rate(start * 10)), 1e-3 * 10 ** (-block / 7), rtol=1e-6)
        if start:
            np.testing.assert_allclose(float(rate(start * 10 - 1)), 1e-3 * 10 ** (-(block - 1) / 7), rtol=1e-6)
    np.testing.assert_allclose(float(rate(5000 * 10)), 1e-4, rtol=1e-6)
    assert sum(3**block for block in range(8)) == 3280


def quick_config(tmp_path, name, **changes):
    base = Config(model="mlp_vae", latent_dim=4, epochs=2, batch_size=32, objective="dreg", train_samples=5,
                  schedule="iwae", binarize="dynamic", workdir=str(tmp_path / name), tensorboard=False,
                  plot_latent=False, limit=128)
    return dataclasses.replace(base, **changes).resolved()


def test_importance_weighted_training_resumes_bit_for_bit(tmp_path, small_mnist):
    def params_of(config):
        train(config, small_mnist, log=lambda line: None)
        return jax.tree.leaves(load_finished_run(tmp_path / config.workdir.rsplit("/", 1)[1])[2])

    straight = params_of(quick_config(tmp_path, "straight"))
    train(quick_config(tmp_path, "resumed", epochs=1), small_mnist, log=lambda line: None)
    resumed = params_of(quick_config(tmp_path, "resumed", resume=True))
    for a, b in zip(straight, resumed, strict=True):  # an interrupted run ends as an uninterrupted one
        assert np.array_equal(a, b)


def test_a_run_made_before_the_objective_flags_keeps_its_identity():
    config = Config().resolved()
    assert {"objective", "train_samples", "schedule"}.isdisjoint(config.result_dict())
    assert "objective" in dataclasses.replace(config, objective="iwae").result_dict()


def test_the_constant_schedule_is_the_seeds_adam():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([0.1, -0.2, 0.3])}
    import optax

    ours, seeds = make_optimizer("constant", 5e-4, 10), optax.adam(5e-4)
    updates = [optimizer.update(grads, optimizer.init(params), params)[0]["w"] for optimizer in (ours, seeds)]
    assert np.array_equal(*updates)
