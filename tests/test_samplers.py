"""vaejax.samplers: parsing, the EM fit against a known mixture and scikit-learn, the cached fit, sampling."""

import itertools

import jax
import numpy as np
import pytest

from vaejax.errors import VaejaxError
from vaejax.models import build_model, decode, init_params
from vaejax.samplers import (
    MAX_COMPONENTS,
    GaussianMixture,
    SamplerSpec,
    fit_file,
    fit_mixture,
    fitted_sampler,
    load_fit,
    mixture_log_likelihood,
    parse_sampler,
    prior_sampler,
    sample_mixture,
    sampled_pixels,
    save_fit,
    standard_normal,
)

TRUE_MIXTURE = GaussianMixture(
    weights=np.array([0.5, 0.3, 0.2]),
    means=np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]]),
    covariances=np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.7], [-0.7, 1.0]]]),
)


def mixture_draws(mixture: GaussianMixture, count: int, seed: int) -> np.ndarray:
    """Draws made with NumPy, independently of the code under test."""
    rng = np.random.default_rng(seed)
    components = rng.choice(len(mixture.weights), size=count, p=mixture.weights)
    factors = np.linalg.cholesky(mixture.covariances)[components]
    return mixture.means[components] + np.einsum("nij,nj->ni", factors, rng.standard_normal((count, 2)))


@pytest.fixture(scope="module")
def codes():
    return mixture_draws(TRUE_MIXTURE, 3000, seed=1)


@pytest.fixture(scope="module")
def fit(codes):
    return fit_mixture(codes, 3, seed=0)


def quiet(_line):
    pass


def same_mixture(first: GaussianMixture, second: GaussianMixture) -> bool:
    """Bit for bit: every array equal."""
    return all(np.array_equal(getattr(first, name), getattr(second, name))
               for name in ("weights", "means", "covariances"))


@pytest.mark.parametrize(("text", "spec"), [("prior", SamplerSpec("prior")), ("gmm:10", SamplerSpec("gmm", 10)),
                                            ("gmm:1", SamplerSpec("gmm", 1))])
def test_parse_sampler_accepts_prior_and_gmm_k(text, spec):
    assert parse_sampler(text) == spec and str(spec) == text


@pytest.mark.parametrize(("text", "message"), [
    ("gmm:0", "K must be a whole number from 1 to"), ("gmm:x", "K must be a whole number"),
    ("gmm", "K must be a whole number"), ("gmm:-1", "K must be a whole number"),
    ("gmm:2.5", "K must be a whole number"), (f"gmm:{MAX_COMPONENTS + 1}", f"from 1 to {MAX_COMPONENTS}"),
    ("gmm:" + "9" * 40, "K must be a whole number"), ("foo", "unknown sampler 'foo': use prior or gmm:K"),
])
def test_parse_sampler_refuses_bad_specs_in_one_line(text, message):
    with pytest.raises(VaejaxError, match=message) as error:
        parse_sampler(text)
    assert "\n" not in str(error.value)


def test_fit_recovers_a_known_mixture(fit):
    found = fit.mixture
    # Match the fitted components to the true ones by the closest means, over every permutation.
    order = min(itertools.permutations(range(3)),
                key=lambda order: np.sum((found.means[list(order)] - TRUE_MIXTURE.means) ** 2))
    order = list(order)
    assert fit.converged
    np.testing.assert_allclose(found.weights[order], TRUE_MIXTURE.weights, atol=0.03)
    np.testing.assert_allclose(found.means[order], TRUE_MIXTURE.means, atol=0.12)
    np.testing.assert_allclose(found.covariances[order], TRUE_MIXTURE.covariances, atol=0.2)


def test_fit_and_density_match_scikit_learn(codes, fit):
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    reference = sklearn_mixture.GaussianMixture(3, covariance_type="full", reg_covar=1e-6, tol=1e-8, max_iter=500,
                                                n_init=3, random_state=0).fit(codes)
    as_ours = GaussianMixture(reference.weights_, reference.means_, reference.covariances_)
    assert mixture_log_likelihood(as_ours, codes) == pytest.approx(reference.score(codes), rel=1e-12)
    assert fit.log_likelihood == pytest.approx(reference.score(codes), abs=1e-4)
    assert mixture_log_likelihood(fit.mixture, codes) == pytest.approx(fit.log_likelihood, abs=1e-12)


def test_the_same_seed_gives_the_same_bytes_and_the_file_reads_back_exactly(codes, fit, tmp_path):
    setting = {"components": 3, "seed": 0}
    save_fit(tmp_path / "first.json", setting, fit)
    save_fit(tmp_path / "second.json", setting, fit_mixture(codes, 3, seed=0))
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()
    loaded_setting, loaded = load_fit(tmp_path / "first.json")
    assert loaded_setting == setting and same_mixture(loaded.mixture, fit.mixture)
    assert (loaded.log_likelihood, loaded.iterations, loaded.converged) == (
        fit.log_likelihood, fit.iterations, fit.converged)


@pytest.mark.parametrize("damage", ["truncated", "pickle", "bad_shape", "not_positive_definite", "bad_weights"])
def test_a_damaged_or_pickled_fit_file_is_one_clear_error(fit, tmp_path, damage):
    import json
    import pickle

    path = tmp_path / "fit.json"
    save_fit(path, {}, fit)
    saved = json.loads(path.read_text())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "pickle":
        path.write_bytes(pickle.dumps(vars(fit.mixture)))
    else:
        if damage == "bad_weights":
            saved["weights"] = [0.5, 0.5, 0.5]
        else:
            saved["covariances"] = saved["covariances"][:2] if damage == "bad_shape" else [[[1, 2], [2, 1]]] * 3
        path.write_text(json.dumps(saved))
    with pytest.raises(VaejaxError, match=str(path)) as error:
        load_fit(path)
    assert "\n" not in str(error.value)


def test_prior_draws_are_the_generate_path_draws():
    model = build_model("conv_vae", latent_dim=3)
    params = init_params(model, jax.random.key(0))
    key = jax.random.key(7)
    prior = prior_sampler(model)
    np.testing.assert_array_equal(prior.sample(key, 50), jax.random.normal(key, (50, 3)))
    direct = jax.nn.sigmoid(decode(model, params, jax.random.normal(key, (50, 3))))
    np.testing.assert_allclose(sampled_pixels(model, params, prior, key, 50), direct, rtol=1e-5, atol=1e-6)


def test_a_plain_autoencoder_has_no_prior():
    with pytest.raises(VaejaxError, match="a plain autoencoder has no prior; use --sampler gmm:K"):
        prior_sampler(build_model("dense_ae", latent_dim=2))


def test_prior_log_likelihood_is_the_standard_normal_density():
    codes = np.random.default_rng(0).standard_normal((4000, 3))
    exact = np.mean(-0.5 * np.sum(codes**2, axis=1) - 1.5 * np.log(2 * np.pi))
    assert mixture_log_likelihood(standard_normal(3), codes) == pytest.approx(exact, rel=1e-12)
    assert exact == pytest.approx(-1.5 * (1 + np.log(2 * np.pi)), abs=0.05)  # its expectation


def test_a_fitted_mixture_scores_held_out_codes_higher_than_the_prior(fit):
    held_out = mixture_draws(TRUE_MIXTURE, 2000, seed=2)
    fitted = mixture_log_likelihood(fit.mixture, held_out)
    assert fitted > mixture_log_likelihood(standard_normal(2), held_out) + 1
    assert fitted == pytest.approx(mixture_log_likelihood(TRUE_MIXTURE, held_out), abs=0.05)


def test_mixture_draws_follow_the_mixture_and_repeat_from_the_key():
    key = jax.random.key(3)
    draws = sample_mixture(TRUE_MIXTURE, key, 20000)
    np.testing.assert_array_equal(draws, sample_mixture(TRUE_MIXTURE, key, 20000))
    assert draws.dtype == np.float32 and draws.shape == (20000, 2)
    refit = fit_mixture(draws, 3, seed=0).mixture
    assert mixture_log_likelihood(refit, draws) == pytest.approx(mixture_log_likelihood(TRUE_MIXTURE, draws), abs=0.01)


def test_fitted_sampler_caches_its_fit_and_refits_when_the_params_or_the_file_change(tmp_path, small_mnist):
    model = build_model("conv_cvae", latent_dim=2)
    params = init_params(model, jax.random.key(0))
    lines = []
    spec = parse_sampler("gmm:3")

    def sampler(params):
        return fitted_sampler(tmp_path, model, params, small_mnist, spec, seed=0, fit_codes=200, log=lines.append)

    first = sampler(params)
    path = fit_file(tmp_path, spec, 200, 0)
    written = path.read_bytes()
    assert first.describe() == "gmm:3 fitted to 200 training codes"
    assert first.sample(jax.random.key(0), 5).shape == (5, 2)
    lines.clear()
    assert same_mixture(sampler(params).mixture, first.mixture)
    assert not any("fitting" in line for line in lines)
    path.write_bytes(written[:50])
    sampler(params)
    assert any(line.startswith(f"warning: {path}") for line in lines) and path.read_bytes() == written
    lines.clear()
    sampler(init_params(model, jax.random.key(1)))
    assert any("another setting; refitting" in line for line in lines) and path.read_bytes() != written
    with pytest.raises(VaejaxError, match="gmm:300 needs at least 300 codes to fit, got 200"):
        fitted_sampler(tmp_path, model, params, small_mnist, parse_sampler("gmm:300"), fit_codes=200, log=quiet)
