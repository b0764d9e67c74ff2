"""Latent samplers for generation: the prior N(0, I), or a Gaussian mixture fitted to training codes.

At a small latent size a VAE's codes do not fill N(0, I), so prior draws land where the decoder saw
little data; a plain autoencoder has no prior at all. Ghosh et al. (2020, "From variational to
deterministic autoencoders") fit a Gaussian mixture to the training codes ex post and sample from it.
Here `gmm:K` fits K full-covariance components by EM (NumPy, float64) to the latent means of the
first N training images, and caches the fit in `<workdir>/samplers/` as JSON, keyed by the params'
SHA-256 so that a retrained run is refitted.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from scipy.special import logsumexp

from vaejax.data import NUM_CLASSES, Dataset
from vaejax.errors import VaejaxError
from vaejax.files import is_whole_number, make_folder, read_json, write_json
from vaejax.inference import decode_latents, evaluation_images, latent_means, prior_draws
from vaejax.models import AutoEncoder

MAX_COMPONENTS = 1000  # far beyond what helps at any latent size; keeps a typo from a day-long fit
DEFAULT_FIT_CODES = 20_000
SAMPLER_DIR = "samplers"
FIT_VERSION = 1  # bump when the EM or the file changes, so cached fits are refitted
REG_COVAR = 1e-6  # added to every covariance's diagonal, as scikit-learn's GaussianMixture does
MAX_ITERATIONS = 1000
TOLERANCE = 1e-5  # stop once the mean log-likelihood per code gains less than this (nats)
RESTARTS = 3  # EM from this many k-means++ starts; the best fit is kept
FIT_NUMBER_BYTES = 64  # a float's repr, its comma and write_json's indentation on its line
FIT_MARGIN_BYTES = 2**16  # the setting and the fit's summary
FIT_DEPTH = 4  # {"covariances": [[[...]]]}
MAX_FIT_BYTES = 2**28  # what `load_fit` reads when not told the fit's size


@dataclass(frozen=True)
class SamplerSpec:
    """`prior` (components None) or `gmm:K`."""

    kind: str
    components: int | None = None

    def __str__(self) -> str:
        return self.kind if self.components is None else f"{self.kind}:{self.components}"


def parse_sampler(text: str) -> SamplerSpec:
    """`prior` or `gmm:K` with K a whole number from 1 to MAX_COMPONENTS; anything else is one VaejaxError."""
    if text == "prior":
        return SamplerSpec("prior")
    if text != "gmm" and not text.startswith("gmm:"):
        raise VaejaxError(f"unknown sampler {text!r}: use prior or gmm:K (a K-component Gaussian mixture, e.g. gmm:10)")
    match = re.fullmatch(r"gmm:([0-9]+)", text)
    if match is None or not 1 <= int(match.group(1)) <= MAX_COMPONENTS:
        raise VaejaxError(f"sampler {text!r}: K must be a whole number from 1 to {MAX_COMPONENTS}, as in gmm:10")
    return SamplerSpec("gmm", int(match.group(1)))


@dataclass(frozen=True)
class GaussianMixture:
    """Weights (K,), means (K, d) and full covariances (K, d, d), all float64."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray


@dataclass(frozen=True)
class MixtureFit:
    mixture: GaussianMixture
    log_likelihood: float  # mean per fitted code, nats
    iterations: int
    converged: bool


def standard_normal(latent_dim: int) -> GaussianMixture:
    """N(0, I) as a one-component mixture, so the prior's density is computed as a mixture's is."""
    return GaussianMixture(np.ones(1), np.zeros((1, latent_dim)), np.eye(latent_dim)[None])


def component_log_densities(mixture: GaussianMixture, codes: np.ndarray) -> np.ndarray:
    """log (w_k N(x_n; mu_k, Sigma_k)) as (N, K), through each covariance's Cholesky factor L_k."""
    codes = np.asarray(codes, np.float64)
    try:
        factors = np.linalg.cholesky(mixture.covariances)
    except np.linalg.LinAlgError:
        raise VaejaxError("a mixture covariance is not positive definite") from None
    # (x - mu) L^-T is whitened: a few (d, d) inverses, then plain matmuls (far faster than N-wide triangular solves)
    whiteners = np.linalg.inv(factors).transpose(0, 2, 1)
    log_dets = 2 * np.log(np.diagonal(factors, axis1=1, axis2=2)).sum(axis=1)
    with np.errstate(divide="ignore"):  # an emptied component has weight 0: log 0 = -inf is right
        log_weights = np.log(mixture.weights)
    squared_distances = np.stack([np.sum((codes @ whitener - mean @ whitener) ** 2, axis=1)
                                  for mean, whitener in zip(mixture.means, whiteners, strict=True)], axis=1)
    return log_weights - 0.5 * (squared_distances + log_dets + codes.shape[1] * np.log(2 * np.pi))


def mixture_log_likelihood(mixture: GaussianMixture, codes: np.ndarray) -> float:
    """Mean log-density of `codes` (N, d) under the mixture, in nats per code (logsumexp over components)."""
    return float(logsumexp(component_log_densities(mixture, codes), axis=1).mean())


def maximization_step(codes: np.ndarray, responsibilities: np.ndarray, reg_covar: float) -> GaussianMixture:
    """The mixture that maximises the expected log-likelihood under `responsibilities` (N, K)."""
    totals = responsibilities.sum(axis=0) + 10 * np.finfo(np.float64).eps  # an empty component divides by ~0, not 0
    means = responsibilities.T @ codes / totals[:, None]
    covariances = np.stack([
        (responsibilities[:, k, None] * (codes - means[k])).T @ (codes - means[k]) / totals[k]
        for k in range(len(totals))
    ]) + reg_covar * np.eye(codes.shape[1])
    return GaussianMixture(totals / totals.sum(), means, covariances)


def kmeans_plus_plus_centres(codes: np.ndarray, components: int, rng: np.random.Generator) -> np.ndarray:
    """Arthur and Vassilvitskii's seeding: each next centre drawn with probability ~ squared distance."""
    centres = [codes[rng.integers(len(codes))]]
    distances = np.sum((codes - centres[0]) ** 2, axis=1)
    for _ in range(components - 1):
        # All codes equal (total 0): any code is as good a centre as another.
        chosen = rng.choice(len(codes), p=distances / distances.sum()) if distances.sum() > 0 else 0
        centres.append(codes[chosen])
        distances = np.minimum(distances, np.sum((codes - codes[chosen]) ** 2, axis=1))
    return np.stack(centres)


def expectation_maximization(codes: np.ndarray, start: GaussianMixture, max_iterations: int, tolerance: float,
                             reg_covar: float) -> MixtureFit:
    """EM from `start` until the mean log-likelihood gains less than `tolerance` or `max_iterations` pass."""
    mixture, previous = start, -np.inf
    for iteration in range(1, max_iterations + 1):
        log_densities = component_log_densities(mixture, codes)
        per_code = logsumexp(log_densities, axis=1)
        log_likelihood = float(per_code.mean())  # of `mixture`, the one the E-step used
        if log_likelihood - previous < tolerance:
            return MixtureFit(mixture, log_likelihood, iteration - 1, True)
        previous = log_likelihood
        mixture = maximization_step(codes, np.exp(log_densities - per_code[:, None]), reg_covar)
    return MixtureFit(mixture, mixture_log_likelihood(mixture, codes), max_iterations, False)


def fit_mixture(codes: np.ndarray, components: int, seed: int, restarts: int = RESTARTS,
                max_iterations: int = MAX_ITERATIONS, tolerance: float = TOLERANCE,
                reg_covar: float = REG_COVAR) -> MixtureFit:
    """A `components`-component full-covariance mixture fitted to `codes` (N, d) by EM in float64.

    Each restart starts from k-means++ centres (the codes' hard assignment to them gives the first
    M-step), all drawn from one generator seeded with `seed`; the restart with the highest
    log-likelihood wins. Same codes and seed, same fit.
    """
    codes = np.asarray(codes, np.float64)
    if not np.isfinite(codes).all():
        raise VaejaxError("the latent codes are not all finite: the run's encoder diverged")
    if len(codes) < components:
        raise VaejaxError(f"gmm:{components} needs at least {components} codes to fit, got {len(codes)}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        centres = kmeans_plus_plus_centres(codes, components, rng)
        # |x - c|^2 up to the |x|^2 every centre shares: (N, K), never (N, K, d)
        nearest = np.argmin((centres**2).sum(axis=1) - 2 * codes @ centres.T, axis=1)
        start = maximization_step(codes, np.eye(components)[nearest], reg_covar)
        fit = expectation_maximization(codes, start, max_iterations, tolerance, reg_covar)
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
    return best


def sample_mixture(mixture: GaussianMixture, key: jax.Array, count: int) -> np.ndarray:
    """`count` draws (count, d) float32: a component by the weights, then its Gaussian via Cholesky."""
    component_key, noise_key = jax.random.split(key)
    weights = jnp.asarray(mixture.weights, jnp.float32)
    components = np.asarray(jax.random.categorical(component_key, jnp.log(weights), shape=(count,)))
    noise = np.asarray(jax.random.normal(noise_key, (count, mixture.means.shape[1])), np.float64)
    factors = np.linalg.cholesky(mixture.covariances)
    z = mixture.means[components] + np.einsum("nij,nj->ni", factors[components], noise)
    return z.astype(np.float32)


@dataclass(frozen=True)
class Sampler:
    """Where generation draws its latent points: the prior, or a mixture fitted to `fitted_codes` codes."""

    spec: SamplerSpec
    mixture: GaussianMixture  # the prior's is N(0, I)
    fitted_codes: int | None = None

    def sample(self, key: jax.Array, count: int) -> np.ndarray:
        """`count` latent points (count, d) float32, all from `key`."""
        if self.spec.kind == "prior":  # drawn as vaejax.generate always has, so prior samples keep their bytes
            return np.asarray(prior_draws(key, count, self.mixture.means.shape[1]))
        return sample_mixture(self.mixture, key, count)

    def mean_log_likelihood(self, codes: np.ndarray) -> float:
        """Mean log-density of `codes` (e.g. the test set's latent means) in nats per code."""
        return mixture_log_likelihood(self.mixture, codes)

    def describe(self) -> str:
        if self.fitted_codes is None:
            return "prior N(0, I)"
        return f"{self.spec} fitted to {self.fitted_codes} training codes"


def prior_sampler(model: AutoEncoder) -> Sampler:
    if not model.variational:
        raise VaejaxError("a plain autoencoder has no prior; use --sampler gmm:K")
    return Sampler(SamplerSpec("prior"), standard_normal(model.encoder.latent_dim))


def balanced_labels(count: int) -> np.ndarray:
    """0, 1, ..., 9, 0, 1, ...: every class equally often (up to one)."""
    return (np.arange(count) % NUM_CLASSES).astype(np.uint8)


def sampled_pixels(model: AutoEncoder, params, sampler: Sampler, key: jax.Array, count: int,
                   labels: np.ndarray | None = None) -> np.ndarray:
    """`count` images decoded from the sampler's latent draws, as pixel probabilities (count, 784).
    A conditional model needs `labels` (count,); the draws are the same with or without them."""
    return decode_latents(model, params, sampler.sample(key, count), labels)


def params_sha256(params) -> str:
    return hashlib.sha256(serialization.to_bytes(params)).hexdigest()


def fit_file(workdir: Path, spec: SamplerSpec, codes: int, seed: int) -> Path:
    return workdir / SAMPLER_DIR / f"gmm{spec.components}-n{codes}-s{seed}.json"


def fit_setting(params_hash: str, components: int, codes: int, seed: int) -> dict:
    """Everything a cached fit depends on: reused only when all of it matches."""
    return {"fit_version": FIT_VERSION, "params_sha256": params_hash, "components": components, "codes": codes,
            "seed": seed, "restarts": RESTARTS, "max_iterations": MAX_ITERATIONS, "tolerance": TOLERANCE,
            "reg_covar": REG_COVAR}


def save_fit(path: Path, setting: dict, fit: MixtureFit) -> None:
    """JSON: floats written by repr, so the float64 arrays read back bit for bit, and no pickle anywhere."""
    make_folder(path.parent)
    mixture = fit.mixture
    write_json(path, {
        "setting": setting,
        "fit": {"log_likelihood": fit.log_likelihood, "iterations": fit.iterations, "converged": fit.converged},
        "weights": mixture.weights.tolist(), "means": mixture.means.tolist(),
        "covariances": mixture.covariances.tolist(),
    })


def fit_bytes(components: int, dims: int) -> int:
    """The most bytes a fit file of `components` components in `dims` dimensions takes."""
    return (components * (1 + dims + dims * dims)) * FIT_NUMBER_BYTES + FIT_MARGIN_BYTES


def load_fit(path: Path, max_bytes: int = MAX_FIT_BYTES) -> tuple[dict, MixtureFit]:
    """(setting, fit) from a file `save_fit` wrote, of at most `max_bytes` (see `fit_bytes`); anything
    malformed is one VaejaxError naming the file."""
    saved = read_json(path, max_bytes, FIT_DEPTH, "mixture fit")
    try:
        arrays = [np.asarray(saved[name]) for name in ("weights", "means", "covariances")]
        if any(array.dtype.kind not in "iuf" for array in arrays):
            raise ValueError("arrays of something other than numbers")
        mixture = GaussianMixture(*(array.astype(np.float64) for array in arrays))
        components, dims = mixture.means.shape
        if (mixture.weights.shape != (components,) or mixture.covariances.shape != (components, dims, dims)
                or not all(np.isfinite(array).all() for array in vars(mixture).values())):
            raise ValueError("arrays of inconsistent shapes or not finite")
        if np.any(mixture.weights < 0) or not np.isclose(mixture.weights.sum(), 1.0):
            raise ValueError("weights are not a distribution")
        np.linalg.cholesky(mixture.covariances)
        summary, setting = saved["fit"], saved["setting"]
        if not (isinstance(summary, dict) and isinstance(setting, dict)
                and isinstance(summary["log_likelihood"], int | float) and isinstance(summary["converged"], bool)
                and is_whole_number(summary["iterations"])):
            raise ValueError("a fit summary or setting of the wrong types")
        fit = MixtureFit(mixture, float(summary["log_likelihood"]), summary["iterations"], summary["converged"])
        return setting, fit
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as error:
        raise VaejaxError(f"{path}: not a vaejax mixture fit ({error})") from None


def fitted_sampler(workdir: Path, model: AutoEncoder, params, dataset: Dataset, spec: SamplerSpec, seed: int = 0,
                   fit_codes: int = DEFAULT_FIT_CODES, binarize: bool = False,
                   log: Callable[[str], None] = print) -> Sampler:
    """The sampler `spec` for the finished run in `workdir`.

    `gmm:K` is fitted to the latent means of the first `fit_codes` training images (with their
    labels, for a conditional model) from `seed`, or read from its cached fit when that was made
    with the same params, K, number of codes, seed and EM setting. A damaged cache file is refitted
    over, with a warning: it holds nothing that cannot be recomputed.
    """
    if spec.kind == "prior":
        return prior_sampler(model)
    if fit_codes < 1:
        raise VaejaxError(f"the mixture needs at least one training code, got {fit_codes}")
    images, labels = dataset.train_images[:fit_codes], dataset.train_labels[:fit_codes]
    setting = fit_setting(params_sha256(params), spec.components, len(images), seed)
    path = fit_file(workdir, spec, len(images), seed)
    if os.path.lexists(path):
        try:
            saved_setting, fit = load_fit(path, fit_bytes(spec.components, model.encoder.latent_dim))
            if saved_setting == setting and fit.mixture.means.shape[1] == model.encoder.latent_dim:
                return Sampler(spec, fit.mixture, len(images))
            log(f"{path} was fitted with another setting; refitting")
        except VaejaxError as error:
            log(f"warning: {error}; refitting")
    log(f"fitting {spec} to the latent means of {len(images)} training images")
    codes = latent_means(model, params, evaluation_images(images, binarize), labels)
    fit = fit_mixture(codes, spec.components, seed)
    save_fit(path, setting, fit)
    log(f"{spec}: mean log-likelihood {fit.log_likelihood:.4f} nats per code after {fit.iterations} EM iterations"
        f"{'' if fit.converged else ' (not converged)'}; wrote {path}")
    return Sampler(spec, fit.mixture, len(images))

