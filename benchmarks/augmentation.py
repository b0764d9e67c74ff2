"""Does generated data help? Classification accuracy score of a conditional VAE's labelled samples.

The digit classifier (vaejax/classifier.py, same seed and epochs each time) is trained on
(1) the real training set, (2) generated labelled images only, as many as the real set, drawn from
a trained `conv_cvae` with every class equally often, and (3) both together; each is scored on the
real test set. Prints a table and writes benchmarks/results/augmentation-<model>-z<latent>.json.

    python train.py --model conv_cvae --latent_dim 8 --epochs 10
    python benchmarks/augmentation.py --workdir runs/conv_cvae-mnist-z8-s0 [--out FILE]
    python benchmarks/augmentation.py --smoke     # seconds: a one-epoch conv_cvae, two classifiers on 64 images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402
from vaejax.checkpoint import load_finished_run  # noqa: E402
from vaejax.classifier import CLASSIFIER_EPOCHS, cached_classifier, train_classifier  # noqa: E402
from vaejax.data import load_dataset  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.inference import to_uint8  # noqa: E402
from vaejax.samplers import balanced_labels, prior_sampler, sampled_pixels  # noqa: E402

use_deterministic_kernels()  # measured as train.py runs vaejax: its kernel settings, before the backend starts

RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="a finished conv_cvae run (required unless --smoke)")
    parser.add_argument("--count", type=int, default=None, help="generated images (default: as many as real)")
    parser.add_argument("--epochs", type=int, default=CLASSIFIER_EPOCHS, help="classifier epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="real training images used (quick runs)")
    parser.add_argument("--sets", nargs="+", default=["real", "generated", "real + generated"],
                        help="which training sets to score (default: all three)")
    parser.add_argument("--classifier_dir", default="runs/classifiers",
                        help="the cache of `vaejax.evaluate`: the classifier on real data is the same one")
    parser.add_argument("--out", default=None,
                        help="JSON (default: benchmarks/results/augmentation-<model>-z<latent>.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"limit": smoke.IMAGES, "count": smoke.IMAGES, "epochs": 1,
                                           "classifier_dir": None, "sets": ["real", "generated"]})
    if args.workdir is None and not args.smoke:
        parser.error("--workdir is required (a finished conv_cvae run)")
    with smoke.scratch() as work:
        if args.smoke:
            args.workdir = args.workdir or smoke.tiny_run(Path(work) / "run", "conv_cvae")
            args.classifier_dir = args.classifier_dir or Path(work) / "classifiers"
        measure(args, argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    config, model, params, history = load_finished_run(Path(args.workdir))
    dataset = load_dataset(config.dataset, config.data_dir).limited(args.limit)
    if args.smoke:
        dataset = smoke.small_test_set(dataset)
    count = args.count or len(dataset.train_images)
    labels = balanced_labels(count)
    started = time.perf_counter()
    generated = to_uint8(sampled_pixels(model, params, prior_sampler(model), jax.random.key(args.seed), count, labels))
    print(f"generated {count} labelled images in {time.perf_counter() - started:.1f} s")

    training_sets = {
        "real": (dataset.train_images, dataset.train_labels),
        "generated": (generated, labels),
        "real + generated": (np.concatenate([dataset.train_images, generated]),
                             np.concatenate([dataset.train_labels, labels])),
    }
    rows = {}
    for name, (images, image_labels) in training_sets.items():
        if name not in args.sets:
            continue
        started = time.perf_counter()
        if name == "real":  # the same recipe and seed as evaluate's judge: reuse it when cached
            classifier = cached_classifier(dataset, Path(args.classifier_dir), args.seed, args.epochs)
        else:
            classifier = train_classifier(images, image_labels, dataset.test_images, dataset.test_labels,
                                          seed=args.seed, epochs=args.epochs, log=lambda line: None)
        rows[name] = {"train_images": len(images), "test_accuracy": classifier.test_accuracy,
                      "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:18s} {len(images):7d} images  test accuracy {classifier.test_accuracy:.4f}"
              f"  ({rows[name]['seconds']} s)", flush=True)

    record = {
        "setting": {"model": config.model, "dataset": config.dataset, "latent_dim": config.latent_dim,
                    "vae_epochs": history[-1]["epoch"], "classifier_epochs": args.epochs, "seed": args.seed,
                    "backend": jax.default_backend()},
        "results": rows,
        "provenance": provenance(__file__, argv),  # of this call; rows kept from earlier calls have their own
    }
    path = smoke.out_path(args, RESULTS / f"augmentation-{config.model}-z{config.latent_dim}.json",
                          "augmentation.json")
    if path.exists():  # rows measured earlier in the same setting (another --sets) are kept
        earlier = json.loads(path.read_text())
        if earlier["setting"] == record["setting"]:
            record["results"] = earlier["results"] | rows
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
