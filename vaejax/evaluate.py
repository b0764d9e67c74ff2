"""`python -m vaejax.evaluate --workdir DIR`: measure a trained model on the test set.

- Likelihood (VAEs): the negative ELBO in nats per image (BCE + KL) and Burda et al.'s k-sample
  importance-weighted bound on the negative log-likelihood, from the same k draws per image.
- Reconstruction (every model), decoded from the latent mean: per-pixel BCE, MSE, PSNR and SSIM.
- Sample quality, for each latent sampler asked (`--samplers`; the prior by default for a VAE, a
  Gaussian mixture fitted to the training codes for any model): Frechet distance between generated
  and test images in the features of the project's digit classifier, the classifier's mean
  confidence and the entropy of its predicted classes, and the test codes' mean log-density under
  the sampler; the same for real training images as the floor.

Results go to `<workdir>/evaluation.json`, with the setting (data, binarization, latent size, k,
number of test images) stored beside every number, and are printed as a table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vaejax import validation
from vaejax.batching import map_batches
from vaejax.command import Command, OneLineParser
from vaejax.config import MAX_TRAIN_IMAGES
from vaejax.data import IMAGE_PIXELS, IMAGE_SIDE, Dataset
from vaejax.inference import METRIC_PRECISION, evaluation_images, latent_means
from vaejax.keys import command_keys
from vaejax.losses import bce_from_logits, drawn_log_weights, gaussian_kl, iwae_bound
from vaejax.metrics import frechet_distance, gaussian_statistics, mse, prediction_statistics, psnr, ssim
from vaejax.models import AutoEncoder, activation_bytes_per_image, decode, encode, images_to_float
from vaejax.samplers import Sampler, SamplerSpec, balanced_labels, fitted_sampler, parse_sampler, sampled_pixels

EVALUATION_FILE = "evaluation.json"
MAX_CHUNK = 50  # importance samples decoded at once per image
BYTES_PER_LOG_WEIGHT = 16  # float32 log weight and log likelihood, each stacked by lax.map and transposed
SAMPLE_BYTES = 2 * IMAGE_PIXELS * 4  # a generated image's probabilities and the classifier's input


def importance_chunk(samples: int) -> int:
    """The largest divisor of `samples` up to MAX_CHUNK, so the draws split into equal chunks."""
    return max(size for size in range(1, min(samples, MAX_CHUNK) + 1) if samples % size == 0)


def summarize(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean over images of each per-image metric, with its standard error as NAME_sem."""
    summary = {}
    for name, array in values.items():
        array = np.asarray(array, np.float64)
        summary[name] = float(array.mean())
        summary[f"{name}_sem"] = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else 0.0
    return summary


def likelihood_metrics(model: AutoEncoder, params, images: np.ndarray, labels: np.ndarray, key: jax.Array,
                       samples: int, batch_size: int) -> dict[str, float]:
    """Negative ELBO (BCE averaged over the k draws + analytic KL) and the k-sample IWAE bound on
    -log p(x), in nats per image. For a conditional model these bound -log p(x | class)."""
    chunk = importance_chunk(samples)

    @jax.jit
    def batch_metrics(images_uint8, labels, batch):
        pixels = images_to_float(images_uint8)
        mean, std = encode(model, params, pixels, labels)
        repeated_labels = jnp.tile(labels, chunk)  # the estimator decodes chunk x batch latents, chunk-major

        def decode_logits(z):
            return decode(model, params, z, repeated_labels)

        log_weights, log_likelihoods = drawn_log_weights(
            decode_logits, pixels.reshape(-1, IMAGE_PIXELS), mean, std, jax.random.fold_in(key, batch), samples, chunk)
        bce = -log_likelihoods.mean(axis=-1)
        kl = gaussian_kl(mean, std)
        return {"elbo": bce + kl, "bce": bce, "kl": kl, "iwae": -iwae_bound(log_weights)}

    return summarize(map_batches(batch_metrics, (images, labels), batch_size, pass_batch_index=True))


def reconstruction_metrics(model: AutoEncoder, params, images: np.ndarray, labels: np.ndarray,
                           batch_size: int) -> dict[str, float]:
    """Per-image BCE per pixel, MSE, PSNR (dB) and SSIM of the reconstructions decoded from the
    latent mean, against the pixels the model was trained to reproduce."""

    @jax.jit
    def batch_metrics(images_uint8, labels):
        pixels = images_to_float(images_uint8)
        logits = decode(model, params, encode(model, params, pixels, labels)[0], labels)
        targets = pixels.reshape(-1, IMAGE_PIXELS)
        probabilities = jax.nn.sigmoid(logits)
        side = (-1, IMAGE_SIDE, IMAGE_SIDE)
        return {
            "bce_per_pixel": bce_from_logits(logits, targets) / IMAGE_PIXELS,
            "mse": mse(probabilities, targets),
            "psnr": psnr(probabilities, targets),
            "ssim": ssim(probabilities.reshape(side), targets.reshape(side)),
        }

    return summarize(map_batches(batch_metrics, (images, labels), batch_size))


def judge(classifier, pixels: np.ndarray, reference_stats) -> tuple[dict[str, float], np.ndarray]:
    """Frechet distance to the reference features and the prediction statistics of images in [0, 1],
    and the class probabilities."""
    probabilities, features = classifier.predict(pixels)
    return {"frechet_distance": frechet_distance(gaussian_statistics(features), reference_stats),
            **prediction_statistics(probabilities)}, probabilities


def sample_quality(model: AutoEncoder, params, dataset: Dataset, classifier, key: jax.Array, count: int,
                   samplers: list[Sampler], test_codes: np.ndarray | None = None) -> dict[str, dict]:
    """Images generated from each sampler against the test set (and, given `test_codes`, the test
    codes' mean log-density under the sampler), and `count` real training images as the floor."""
    _, test_features = classifier.predict(dataset.test_images / 255.0)
    reference = gaussian_statistics(test_features)
    labels = balanced_labels(count) if model.conditional else None
    generated = {}
    for sampler in samplers:
        metrics, probabilities = judge(classifier, sampled_pixels(model, params, sampler, key, count, labels),
                                       reference)
        if labels is not None:  # does the image show the class it was asked for?
            metrics["label_agreement"] = float((probabilities.argmax(axis=1) == labels).mean())
        if test_codes is not None:
            metrics["test_code_log_likelihood"] = sampler.mean_log_likelihood(test_codes)
        generated[str(sampler.spec)] = metrics
    real_count = min(count, len(dataset.train_images))
    floor, _ = judge(classifier, dataset.train_images[:real_count] / 255.0, reference)
    return {"samplers": generated, "real_train_images": floor}


@dataclass(frozen=True)
class EvaluateOptions:
    """`python -m vaejax.evaluate`'s options; `validate` holds every bound that needs no data."""

    workdir: Path
    iw_samples: int = 100
    limit: int | None = None
    samples: int = 10000
    classifier_dir: Path | None = Path("runs/classifiers")  # None: no sample-quality metrics
    seed: int = 0
    batch_size: int = 100
    samplers: tuple[str, ...] | None = None  # None: the prior for a VAE, none for a plain autoencoder

    def validate(self) -> None:
        validation.existing_folder("--workdir", self.workdir)
        validation.whole_number("--iw_samples", self.iw_samples, 1, validation.INT32_MAX)
        if self.limit is not None:
            validation.whole_number("--limit", self.limit, 1, MAX_TRAIN_IMAGES, "no dataset holds more images")
        validation.whole_number("--samples", self.samples, 2, validation.INT32_MAX, "a Frechet distance needs two")
        if self.classifier_dir is not None:
            validation.output_folder("--classifier_dir", self.classifier_dir)
        validation.whole_number("--batch_size", self.batch_size, 1, MAX_TRAIN_IMAGES, "no dataset holds more images")
        validation.seed("--seed", self.seed)
        for text in self.samplers or ():
            parse_sampler(text)

    def sampler_specs(self, model: AutoEncoder) -> list[SamplerSpec]:
        texts = self.samplers if self.samplers is not None else ("prior",) if model.variational else ()
        return [parse_sampler(text) for text in texts]

    def check_memory(self, model: AutoEncoder, memory_bytes: int) -> None:
        """The bounds that follow from the memory: a batch's importance draws and decodes, the samples."""
        if self.classifier_dir is not None:
            validation.memory_bound("--samples", self.samples, SAMPLE_BYTES, validation.host_memory_bytes(),
                                    "the generated images and their pixel probabilities")
        if not model.variational:
            return
        validation.memory_bound("--iw_samples", self.iw_samples, self.batch_size * BYTES_PER_LOG_WEIGHT,
                                memory_bytes, f"the log weights of a batch of {self.batch_size}")
        chunk = importance_chunk(self.iw_samples)
        validation.memory_bound("--batch_size", self.batch_size, chunk * activation_bytes_per_image(model),
                                memory_bytes, f"decoding {chunk} draws per image at once")


def evaluate_run(options: EvaluateOptions, log: Callable[[str], None] = print) -> dict:
    """Every metric of the run in `options.workdir`; no classifier_dir skips the sample-quality part.
    Holds the work directory's lock, as evaluation.json and the sampler fits are written there."""
    from vaejax.files import WorkdirLock

    with WorkdirLock(options.workdir):
        return _evaluate_run(options, log)


def _evaluate_run(options: EvaluateOptions, log: Callable[[str], None]) -> dict:
    from vaejax.checkpoint import load_finished_run
    from vaejax.classifier import cached_classifier
    from vaejax.data import load_dataset
    from vaejax.devices import device_memory_bytes
    from vaejax.files import write_json

    workdir, iw_samples, limit, batch_size = options.workdir, options.iw_samples, options.limit, options.batch_size
    samples, classifier_dir = options.samples, options.classifier_dir
    config, model, params, history = load_finished_run(workdir)
    options.check_memory(model, device_memory_bytes())
    dataset = load_dataset(config.dataset, config.data_dir)
    validation.require(limit is None or limit <= len(dataset.test_images),
                       f"--limit {limit} is more than the {len(dataset.test_images)} test images")
    test_images = evaluation_images(dataset.test_images[:limit], config.binarized)
    test_labels = dataset.test_labels[:limit].astype(np.int32)
    likelihood_key, sample_key = command_keys(options.seed)
    specs = options.sampler_specs(model) if classifier_dir is not None else []
    samplers = [fitted_sampler(workdir, model, params, dataset, spec, binarize=config.binarized, log=log)
                for spec in specs]
    # Trained (and cached) at the backend's default precision, whoever asks for it first.
    classifier = cached_classifier(dataset, classifier_dir, log=log) if samplers else None
    with jax.default_matmul_precision(METRIC_PRECISION):  # reported metrics: full float32 on every backend
        results = {
            "setting": {
                "model": config.model, "dataset": config.dataset, "binarize": config.binarize,
                "latent_dim": config.latent_dim, "epochs": history[-1]["epoch"], "test_images": len(test_images),
                "iw_samples": iw_samples if model.variational else None, "seed": options.seed,
                "backend": jax.default_backend(),
            },
            "reconstruction": reconstruction_metrics(model, params, test_images, test_labels, batch_size),
        }
        if model.variational:
            log(f"importance sampling: {iw_samples} draws for each of {len(test_images)} test images")
            results["likelihood"] = likelihood_metrics(model, params, test_images, test_labels, likelihood_key,
                                                       iw_samples, batch_size)
        if classifier is not None:
            test_codes = latent_means(model, params, test_images, test_labels)
            results["sample_quality"] = sample_quality(model, params, dataset, classifier, sample_key, samples,
                                                       samplers, test_codes)
            results["setting"] |= {"samples": samples, "classifier_test_accuracy": classifier.test_accuracy,
                                   "samplers": {str(sampler.spec): sampler.describe() for sampler in samplers}}
    write_json(workdir / EVALUATION_FILE, results)
    return results


def format_table(results: dict) -> str:
    """The results as a small aligned table, the setting on top."""
    setting = ", ".join(f"{name} {value}" for name, value in results["setting"].items() if value is not None)
    lines = [setting]

    def row(label: str, value: float, sem: float | None = None, unit: str = "") -> None:
        spread = f" +- {sem:.4g}" if sem is not None else ""
        lines.append(f"  {label:<44s} {value:10.4f}{spread} {unit}".rstrip())

    if "likelihood" in results:
        like = results["likelihood"]
        k = results["setting"]["iw_samples"]
        row("negative ELBO", like["elbo"], like["elbo_sem"], "nats")
        row("  BCE", like["bce"], like["bce_sem"], "nats")
        row("  KL", like["kl"], like["kl_sem"], "nats")
        row(f"IWAE bound on -log p(x), k = {k}", like["iwae"], like["iwae_sem"], "nats")
    recon = results["reconstruction"]
    row("reconstruction BCE per pixel", recon["bce_per_pixel"], recon["bce_per_pixel_sem"], "nats")
    row("reconstruction MSE", recon["mse"], recon["mse_sem"])
    row("reconstruction PSNR", recon["psnr"], recon["psnr_sem"], "dB")
    row("reconstruction SSIM", recon["ssim"], recon["ssim_sem"])
    if "sample_quality" in results:
        quality = results["sample_quality"]
        sources = {f"samples from {spec}": values for spec, values in quality["samplers"].items()}
        for source, values in (sources | {"real train images": quality["real_train_images"]}).items():
            for name, value in values.items():
                row(f"{source}: {name.replace('_', ' ')}", value)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    defaults = EvaluateOptions(Path("."))
    parser = OneLineParser(prog=COMMAND_NAME, description=__doc__.splitlines()[0].split(": ", 1)[1])
    add = parser.add_argument
    add("--workdir", required=True, help="work directory of a finished run")
    add("--iw_samples", type=int, default=defaults.iw_samples,
        help="importance samples k per test image (default: %(default)s; 1000 or 5000 on a GPU, as papers use)")
    add("--limit", type=int, default=defaults.limit, help="evaluate on the first N test images only (default: all)")
    add("--samples", type=int, default=defaults.samples,
        help="generated images judged by the classifier (default: %(default)s)")
    add("--classifier_dir", default=str(defaults.classifier_dir),
        help="where the digit classifier is cached, trained there on first use (default: %(default)s)")
    add("--no-sample_quality", dest="sample_quality", action="store_false",
        help="skip the classifier-based sample metrics")
    add("--batch_size", type=int, default=defaults.batch_size,
        help="test images per compiled batch (default: %(default)s)")
    add("--seed", type=int, default=defaults.seed,
        help="seed of the importance draws and the samples (default: %(default)s)")
    add("--samplers", nargs="+", default=defaults.samplers, metavar="SAMPLER",
        help="the latent samplers whose samples are judged: prior, gmm:K (a K-component Gaussian mixture fitted to "
             "the training codes; see vaejax.generate); default: prior for a VAE, none for a plain autoencoder")
    return parser


def options_from_flags(flags: argparse.Namespace) -> EvaluateOptions:
    options = EvaluateOptions(
        Path(flags.workdir), flags.iw_samples, flags.limit, flags.samples,
        Path(flags.classifier_dir) if flags.sample_quality else None, flags.seed, flags.batch_size,
        tuple(flags.samplers) if flags.samplers is not None else None,
    )
    options.validate()
    return options


def run(options: EvaluateOptions) -> int:
    results = evaluate_run(options)
    print(format_table(results))
    print(f"wrote {options.workdir / EVALUATION_FILE}")
    return 0


COMMAND_NAME = "python -m vaejax.evaluate"
COMMAND = Command(COMMAND_NAME, build_parser, options_from_flags, run)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)


if __name__ == "__main__":
    sys.exit(main())
