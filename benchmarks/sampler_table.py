"""Latent samplers compared: the prior N(0, I) against Gaussian mixtures fitted to training codes.

    python benchmarks/sampler_table.py RUN [RUN ...] [--samplers prior,gmm:10,gmm:50] [--count 10000]
        [--fit_codes 20000] [--seed 0] [--classifier_dir runs/classifiers] [--limit N] [--out FILE]
    python benchmarks/sampler_table.py --smoke    # seconds: a one-epoch mlp_vae, 64 images

For each finished run and sampler, `count` images are decoded from the sampler's draws (a
conditional model asked for every class equally often) and judged by the cached digit classifier as
`python -m vaejax.evaluate` judges prior samples: Frechet distance to the test set's features, mean
confidence, entropy of the predicted classes (and, for conv_cvae, how often the image shows the
class asked for). The prior's draws use evaluate's key, so its row repeats evaluate's numbers for
the same seed on the same machine (on another CPU, to about 1e-8: the Frechet distance's float64 linear algebra
runs in NumPy's OpenBLAS, whose kernels differ per instruction set). Beside them: the mean log-likelihood of the
test set's latent means under the sampler (nats per code: how well the sampler covers where the data is), and the
real training images as the floor. The prior is skipped for a plain autoencoder, which has none. Mixture fits are
cached in each run's `samplers/` folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402
from vaejax.checkpoint import load_finished_run  # noqa: E402
from vaejax.classifier import cached_classifier  # noqa: E402
from vaejax.data import load_dataset  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.errors import VaejaxError  # noqa: E402
from vaejax.evaluate import sample_quality  # noqa: E402
from vaejax.files import write_json  # noqa: E402
from vaejax.inference import METRIC_PRECISION, evaluation_images, latent_means  # noqa: E402
from vaejax.keys import command_keys  # noqa: E402
from vaejax.samplers import DEFAULT_FIT_CODES, fitted_sampler, parse_sampler  # noqa: E402

use_deterministic_kernels()  # measured as train.py runs vaejax: its kernel settings, before the backend starts

# The table's measured columns: (key in the results, heading, decimals)
COLUMNS = (("frechet_distance", "FD", 1), ("mean_confidence", "confidence", 3), ("class_entropy", "class entropy", 3),
           ("label_agreement", "label agreement", 3), ("test_code_log_likelihood", "test log-lik (nats/code)", 3))
FLOOR = "real training images"


def compare_samplers(workdir: Path, specs: list, count: int, fit_codes: int, seed: int, classifier_dir: Path,
                     limit: int | None = None, small_test_set: bool = False) -> dict:
    """Each sampler's sample quality and held-out code log-likelihood for the run in `workdir`, measured
    as `vaejax.evaluate --samplers` measures them (same key, same classifier), on the first `limit`
    training images (the classifier's and the fits'); `small_test_set`: a smoke run's few test images."""
    config, model, params, history = load_finished_run(workdir)
    dataset = load_dataset(config.dataset, config.data_dir).limited(limit)
    if small_test_set:
        dataset = smoke.small_test_set(dataset)
    classifier = cached_classifier(dataset, classifier_dir, log=print)  # outside the precision block, as evaluate
    _, sample_key = command_keys(seed)  # evaluate's sample key
    samplers = [fitted_sampler(workdir, model, params, dataset, spec, seed, fit_codes, config.binarized, log=print)
                for spec in specs if model.variational or spec.kind != "prior"]
    with jax.default_matmul_precision(METRIC_PRECISION):
        test_codes = latent_means(model, params, evaluation_images(dataset.test_images, config.binarized),
                                  dataset.test_labels)
        quality = sample_quality(model, params, dataset, classifier, sample_key, count, samplers, test_codes)
    for sampler in samplers:
        quality["samplers"][str(sampler.spec)]["description"] = sampler.describe()
    return {"model": config.model, "dataset": config.dataset, "latent_dim": config.latent_dim,
            "epochs": history[-1]["epoch"], "classifier_test_accuracy": classifier.test_accuracy, **quality}


def markdown_table(runs: dict[str, dict]) -> str:
    """One row per run and sampler, then the run's floor; the FD change against the run's prior where it has one."""
    headings = ["run", "sampler", *(heading for _, heading, _ in COLUMNS), "FD vs prior"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for name, run in runs.items():
        prior = run["samplers"].get("prior")
        for sampler, values in [*run["samplers"].items(), (FLOOR, run["real_train_images"])]:
            change = (f"{100 * (values['frechet_distance'] / prior['frechet_distance'] - 1):+.1f} %"
                      if prior and sampler != FLOOR else "")
            # + 0.0 prints an entropy of -0.0 (every image one class) as 0.000
            measured = [f"{values[key] + 0.0:.{digits}f}" if key in values else "" for key, _, digits in COLUMNS]
            lines.append("| " + " | ".join([name, sampler, *measured, change]) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="work directories of finished runs (--smoke: a tiny run of its own)")
    parser.add_argument("--samplers", default="prior,gmm:10,gmm:50", help="comma-separated sampler specs")
    parser.add_argument("--count", type=int, default=10000, help="images generated per sampler")
    parser.add_argument("--fit_codes", type=int, default=DEFAULT_FIT_CODES,
                        help="training codes a mixture is fitted to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fits and the draws")
    parser.add_argument("--classifier_dir", default=str(ROOT / "runs" / "classifiers"))
    parser.add_argument("--limit", type=int, default=None,
                        help="the first N training images only, for the classifier and the fits (quick looks)")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/sampler_table.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"samplers": "prior,gmm:2", "count": smoke.IMAGES,
                                           "fit_codes": smoke.IMAGES, "limit": smoke.IMAGES, "classifier_dir": None})
    if not args.runs and not args.smoke:
        parser.error("give the work directory of at least one finished run")
    if args.count < 2:
        parser.error("--count must be at least 2 (a Frechet distance needs a covariance)")
    with smoke.scratch() as work:
        if args.smoke:
            args.runs = args.runs or [smoke.tiny_run(Path(work) / "mlp_vae-smoke", "mlp_vae")]
            args.classifier_dir = args.classifier_dir or Path(work) / "classifiers"
        return measure(args, argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> int:
    try:
        specs = [parse_sampler(text) for text in args.samplers.split(",")]
        runs = {Path(run).name: compare_samplers(Path(run), specs, args.count, args.fit_codes, args.seed,
                                                 Path(args.classifier_dir), args.limit, args.smoke)
                for run in args.runs}
    except VaejaxError as error:
        print(f"sampler_table.py: error: {error}", file=sys.stderr)
        return error.exit_code
    print(markdown_table(runs))
    setting = {"count": args.count, "fit_codes": args.fit_codes, "seed": args.seed, "limit": args.limit,
               "backend": jax.default_backend()}
    out = smoke.out_path(args, ROOT / "benchmarks" / "results" / "sampler_table.json", "sampler_table.json")
    write_json(out, {"setting": setting, "runs": runs, "provenance": provenance(__file__, argv)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
