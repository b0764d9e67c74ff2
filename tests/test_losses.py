import jax.numpy as jnp
import numpy as np

from vaejax.losses import bce_from_logits, gaussian_kl, iwae_bound, loss_terms


def hand_bce(logits, targets):
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    return -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities)).sum(axis=1)


def hand_kl(mean, std):
    return 0.5 * (mean**2 + std**2 - np.log(std**2) - 1).sum(axis=1)


def test_vae_loss_matches_a_numpy_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 784))
    images = rng.uniform(0, 1, (6, 784))
    mean, std = rng.normal(0, 1, (6, 2)), rng.uniform(0.1, 2, (6, 2))
    terms = loss_terms(jnp.asarray(logits, jnp.float32), jnp.asarray(images, jnp.float32),
                       jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32), jnp.ones(6))
    expected_bce, expected_kl = hand_bce(logits, images), hand_kl(mean, std)
    np.testing.assert_allclose(terms["bce"], expected_bce.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], expected_kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["loss"], (expected_bce + expected_kl).mean(), rtol=1e-5)


def test_autoencoder_loss_is_the_bce_alone():
    logits, images = jnp.full((2, 784), 0.3), jnp.full((2, 784), 0.5)
    terms = loss_terms(logits, images, jnp.ones((2, 2)), None, jnp.ones(2))
    assert float(terms["kl"]) == 0.0
    np.testing.assert_allclose(terms["loss"], hand_bce(np.full((1, 784), 0.3), np.full((1, 784), 0.5))[0],
                               rtol=1e-6)


def test_bce_from_logits_stays_finite_where_log_sigmoid_would_not():
    logits = jnp.array([[200.0, -200.0, 0.0]])
    targets = jnp.array([[0.0, 1.0, 1.0]])
    np.testing.assert_allclose(bce_from_logits(logits, targets), [400.0 + np.log(2.0)], rtol=1e-6)


def test_kl_is_zero_at_the_prior():
    assert float(gaussian_kl(jnp.zeros((1, 4)), jnp.ones((1, 4)))[0]) == 0.0


def test_padding_weights_leave_the_real_images_mean():
    logits = jnp.arange(4 * 784, dtype=jnp.float32).reshape(4, 784) / 1000.0 - 1.0
    images = jnp.full((4, 784), 0.25)
    mean, std = jnp.ones((4, 2)), jnp.full((4, 2), 0.5)
    padded = loss_terms(logits, images, mean, std, jnp.array([1.0, 1.0, 0.0, 0.0]))
    real = loss_terms(logits[:2], images[:2], mean[:2], std[:2], jnp.ones(2))
    for name in ("loss", "bce", "kl"):
        np.testing.assert_allclose(padded[name], real[name], rtol=1e-6)


def test_the_iwae_bound_is_the_log_mean_of_the_weights():
    rng = np.random.default_rng(1)
    log_weights = rng.normal(-100.0, 3.0, (4, 50))
    expected = np.log(np.mean(np.exp(log_weights + 100.0), axis=-1)) - 100.0  # shifted: exp(-100) underflows less
    np.testing.assert_allclose(iwae_bound(jnp.asarray(log_weights, jnp.float32)), expected, rtol=1e-5)
    np.testing.assert_allclose(iwae_bound(jnp.full((2, 7), -3.5)), [-3.5, -3.5], rtol=1e-6)  # equal weights: w itself
