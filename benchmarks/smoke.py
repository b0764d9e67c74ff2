"""`--smoke`, the same for every benchmark script: the whole real code path at tiny sizes, in seconds,
so that a benchmark a change has broken fails the test suite (tests/test_benchmarks.py).

The rule: under `--smoke` a script's defaults become its tiny sizes (flags given still win); its
JSON goes to `--out`, or without one to a new folder in the system's temporary directory, never to
benchmarks/results/ or figures/ (such an `--out` is refused); the runs, classifiers and other work
it needs are made in a temporary folder removed when it ends.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # vaejax (and JAX) load only when a smoke run needs them
    from vaejax.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
MEASURED = (ROOT / "benchmarks" / "results", ROOT / "figures")  # what a smoke run never writes into
IMAGES = 64  # training images of a smoke run
TEST_IMAGES = 256  # test images a tiny run evaluates on
BATCH = 32


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: checks that the script still runs; writes only to --out "
                             "or a temporary folder")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None, tiny: dict,
               outputs: tuple[str, ...] = ("out",)) -> argparse.Namespace:
    """Parse `argv`; under --smoke again with `tiny` as the defaults, refusing `outputs` (the flags naming
    files the script writes) that point into benchmarks/results/ or figures/."""
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**tiny)
        args = parser.parse_args(argv)
        for name in outputs:
            path = getattr(args, name)
            if path is not None and any(Path(path).resolve().is_relative_to(folder) for folder in MEASURED):
                parser.error(f"--smoke does not write into {Path(path).resolve().parent}: "
                             "measured results and figures live there")
    return args


def out_path(args: argparse.Namespace, default: str | Path | None, name: str) -> Path | None:
    """Where the JSON goes: --out; else `default` (None: no JSON), or under --smoke a new temporary folder."""
    if args.out is not None:
        return Path(args.out)
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="vaejax-smoke-")) / name
    return None if default is None else Path(default)


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary folder for a smoke run's work, removed when the `with` block ends."""
    return tempfile.TemporaryDirectory(prefix="vaejax-smoke-work-")


def small_test_set(dataset: Dataset) -> Dataset:
    """`dataset` with its first TEST_IMAGES test images only: a whole test set takes seconds to judge on a CPU."""
    return dataclasses.replace(dataset, test_images=dataset.test_images[:TEST_IMAGES],
                               test_labels=dataset.test_labels[:TEST_IMAGES])


def tiny_run(workdir: Path, model: str, latent_dim: int = 2) -> Path:
    """A finished one-epoch run of `model` on IMAGES training and TEST_IMAGES test images, for the
    scripts that measure a finished run."""
    from vaejax.config import Config
    from vaejax.data import load_bundled_mnist
    from vaejax.training import train

    config = Config(model=model, latent_dim=latent_dim, epochs=1, batch_size=BATCH, workdir=str(workdir),
                    tensorboard=False, plot_latent=False).resolved()
    train(config, small_test_set(load_bundled_mnist().limited(IMAGES)), log=lambda line: None)
    print(f"smoke: trained a one-epoch {model} (latent {latent_dim}) on {IMAGES} images in {workdir}")
    return workdir
