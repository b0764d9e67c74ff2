"""The evaluation's estimators and metrics on tiny inputs where the answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from vaejax.evaluate import importance_chunk
from vaejax.losses import bce_from_logits, drawn_log_weights, gaussian_log_density, iwae_bound
from vaejax.metrics import frechet_distance, gaussian_statistics, mse, prediction_statistics, psnr, ssim

# A model whose likelihood is known exactly: z ~ N(0, 1) in one dimension, three Bernoulli pixels
# with logits slope * z + offset. log p(x) = log E_z[p(x|z)] by Gauss-Hermite quadrature.
SLOPES = jnp.array([2.0, -1.5, 0.7])
OFFSETS = jnp.array([0.3, 0.5, -1.0])
PIXELS = jnp.array([1.0, 0.0, 1.0])


def toy_decoder(z):
    return z * SLOPES + OFFSETS  # (N, 1) -> (N, 3)


def quadrature() -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights of E_{z ~ N(0,1)}[f(z)] ~ sum weights * f(z), times p(x|z) at each node."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # integrates against exp(-z^2 / 2)
    logits = nodes[:, None] * np.asarray(SLOPES) + np.asarray(OFFSETS)
    log_p_given_z = -np.asarray(bce_from_logits(jnp.asarray(logits), jnp.tile(PIXELS, (80, 1))), np.float64)
    return nodes, weights / np.sqrt(2 * np.pi) * np.exp(log_p_given_z)


def exact_log_likelihood() -> float:
    return float(np.log(quadrature()[1].sum()))


def posterior_moments() -> tuple[float, float]:
    nodes, joint = quadrature()
    posterior = joint / joint.sum()
    mean = float(np.sum(posterior * nodes))
    return mean, float(np.sqrt(np.sum(posterior * (nodes - mean) ** 2)))


def toy_log_weights(samples: int, images: int, key, mean=0.4, std=0.9):
    targets = jnp.tile(PIXELS, (images, 1))
    means, stds = jnp.full((images, 1), mean), jnp.full((images, 1), std)
    return drawn_log_weights(toy_decoder, targets, means, stds, key, samples, importance_chunk(samples))


def test_iwae_converges_to_the_exact_log_likelihood():
    # With q close to the posterior (its moments, by quadrature) the weights vary little.
    mean, std = posterior_moments()
    log_weights, _ = toy_log_weights(20000, 8, jax.random.key(0), mean, std)
    assert np.asarray(iwae_bound(log_weights)).mean() == pytest.approx(exact_log_likelihood(), abs=1e-3)
    # With a poorer q the bound still gets there, from below, as k grows.
    log_weights, _ = toy_log_weights(20000, 8, jax.random.key(1))
    bound = np.asarray(iwae_bound(log_weights)).mean()
    assert exact_log_likelihood() - 0.01 < bound < exact_log_likelihood() + 5e-3


def test_iwae_is_never_below_the_elbo_and_tightens_with_k():
    exact = exact_log_likelihood()
    means = []
    for k in (1, 5, 50, 500):
        log_weights, _ = toy_log_weights(k, 400, jax.random.key(k))
        bound = np.asarray(iwae_bound(log_weights))
        assert np.all(bound >= np.asarray(log_weights.mean(axis=-1)) - 1e-5)  # Jensen, sample by sample
        means.append(bound.mean())
    assert means == sorted(means)  # the expected bound rises with k ...
    assert means[-1] <= exact + 1e-3  # ... towards log p(x), staying below it
    assert exact - means[0] > 10 * (exact - means[-1])


def test_with_the_exact_posterior_every_weight_is_the_likelihood():
    # A decoder that ignores z and q = prior: each weight is p(x) exactly, for any k.
    targets = jnp.tile(PIXELS, (2, 1))
    log_weights, log_likelihoods = drawn_log_weights(
        lambda z: jnp.broadcast_to(OFFSETS, (z.shape[0], 3)), targets, jnp.zeros((2, 1)), jnp.ones((2, 1)),
        jax.random.key(0), 10, 5)
    expected = -bce_from_logits(OFFSETS[None], PIXELS[None])[0]
    np.testing.assert_allclose(np.asarray(log_weights), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(iwae_bound(log_weights)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(log_likelihoods), expected, rtol=1e-6)


def test_gaussian_log_density_matches_the_formula():
    z, mean, std = jnp.array([[0.5, -1.0]]), jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 2.0]])
    expected = sum(-0.5 * ((a - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
                   for a, m, s in [(0.5, 0.0, 1.0), (-1.0, 1.0, 2.0)])
    np.testing.assert_allclose(float(gaussian_log_density(z, mean, std)[0]), expected, rtol=1e-6)


def test_importance_chunk_divides_the_samples():
    assert [importance_chunk(k) for k in (1, 7, 50, 100, 1000, 5000, 97)] == [1, 7, 50, 50, 50, 50, 1]


def test_ssim_of_identical_images_is_one_and_of_constants_is_the_luminance_term():
    image = jax.random.uniform(jax.random.key(0), (1, 28, 28))
    np.testing.assert_allclose(np.asarray(ssim(image, image)), 1.0, rtol=1e-5)
    a, b = 0.2, 0.7
    c1 = (0.01) ** 2
    got = ssim(jnp.full((1, 28, 28), a), jnp.full((1, 28, 28), b))
    np.testing.assert_allclose(np.asarray(got), (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-4)


def test_ssim_falls_with_noise_and_is_symmetric():
    image = jax.random.uniform(jax.random.key(0), (1, 28, 28))
    noise = jax.random.normal(jax.random.key(1), (1, 28, 28))
    scores = [float(ssim(image + level * noise, image)[0]) for level in (0.01, 0.1, 0.5)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    np.testing.assert_allclose(np.asarray(ssim(image + 0.1 * noise, image)),
                               np.asarray(ssim(image, image + 0.1 * noise)), rtol=1e-6)


def test_mse_and_psnr_by_hand():
    predictions = jnp.full((2, 4), 0.5)
    targets = jnp.array([[0.5, 0.5, 0.5, 0.5], [0.6, 0.4, 0.6, 0.4]])
    np.testing.assert_allclose(np.asarray(mse(predictions, targets)), [0.0, 0.01], atol=1e-7)
    np.testing.assert_allclose(float(psnr(predictions[1:], targets[1:])[0]), 20.0, rtol=1e-5)  # 10 log10(1/0.01)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    var_a, var_b = np.array([1.0, 4.0]), np.array([4.0, 9.0])
    expected = 1.0 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = frechet_distance((mean_a, np.diag(var_a)), (mean_b, np.diag(var_b)))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_and_is_zero_for_equal_statistics():
    rng = np.random.default_rng(0)
    features_a, features_b = rng.normal(size=(500, 6)), rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    stats_a, stats_b = gaussian_statistics(features_a), gaussian_statistics(features_b)
    (mean_a, cov_a), (mean_b, cov_b) = stats_a, stats_b
    reference = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(stats_a, stats_b) == pytest.approx(reference, rel=1e-6)
    assert abs(frechet_distance(stats_a, stats_a)) < 1e-8


def test_prediction_statistics_confidence_and_class_entropy():
    confident = np.eye(10)[np.arange(100) % 10]
    stats = prediction_statistics(confident)
    assert stats["mean_confidence"] == pytest.approx(1.0)
    assert stats["class_entropy"] == pytest.approx(np.log(10))
    one_class = np.tile([[0.5, 0.5] + [0.0] * 8], (10, 1))
    assert prediction_statistics(one_class) == {"mean_confidence": 0.5, "class_entropy": 0.0}


def test_ssim_matches_scikit_image():
    # Reference: skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=1.0) with scikit-image 0.26.0 on these arrays.
    rng = np.random.default_rng(0)
    a = rng.random((28, 28))
    b = np.clip(a + 0.2 * rng.normal(size=(28, 28)), 0, 1)
    got = ssim(jnp.asarray(a, jnp.float32)[None], jnp.asarray(b, jnp.float32)[None])
    assert float(got[0]) == pytest.approx(0.800462052956239, abs=1e-6)
