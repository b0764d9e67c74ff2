"""Seed 003's experiment: dense_ae (784-32-2-32-784), Adam 1e-3, batch 32, 10 epochs, seeds 0-4.

    python benchmarks/seed003_dense_ae.py [--seeds 0 1 2 3 4] [--root runs/seed003] [--out FILE]
    python benchmarks/seed003_dense_ae.py --smoke     # seconds: one seed, one epoch on 64 images

The article reports per-pixel BCE loss 0.1983 (train) / 0.1985 (val) after epoch 10 for one Keras
run. The ReLU on the 2-d code can switch units off, so results depend on the seed: this prints
each seed's figures, their mean and the best, beside the article's, and writes them as JSON
(default: <root>/summary.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402
from vaejax.config import MODEL_DEFAULTS, Config  # noqa: E402
from vaejax.data import load_bundled_mnist  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.training import train  # noqa: E402

use_deterministic_kernels()  # measured as train.py runs vaejax: its kernel settings, before the backend starts

ARTICLE = {"train": 0.1983, "test": 0.1985}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--root", default="runs/seed003", help="where the runs go (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=MODEL_DEFAULTS["dense_ae"]["epochs"],
                        help="epochs per run (default: the article's %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="the first N training images only (quick looks)")
    parser.add_argument("--out", default=None, help="JSON (default: <root>/summary.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"seeds": [0], "root": None, "epochs": 1, "limit": smoke.IMAGES})
    with smoke.scratch() as work:
        measure(args, argv, Path(args.root or work))


def measure(args: argparse.Namespace, argv: list[str] | None, root: Path) -> None:
    dataset = load_bundled_mnist()
    rows = []
    for seed in args.seeds:
        config = Config(model="dense_ae", seed=seed, epochs=args.epochs, limit=args.limit,
                        workdir=str(root / f"s{seed}"), overwrite=True).resolved()
        last = train(config, dataset, log=lambda line, seed=seed: print(f"seed {seed}: {line}")).history[-1]
        rows.append({"seed": seed, "train": last["train"]["bce_per_pixel"], "test": last["test"]["bce_per_pixel"],
                     "seconds_per_epoch": last["seconds"]})
    trains, tests = [row["train"] for row in rows], [row["test"] for row in rows]
    summary = {"runs": rows, "train_mean": statistics.mean(trains), "train_best": min(trains),
               "test_mean": statistics.mean(tests), "test_best": min(tests), "article": ARTICLE,
               "epochs": args.epochs, "limit": args.limit, "provenance": provenance(__file__, argv)}
    out = smoke.out_path(args, root / "summary.json", "seed003_dense_ae.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, summary)
    print(f"\nper-pixel BCE after {args.epochs} epochs (dense_ae, batch 32, Adam 1e-3)")
    print(f"{'seed':>8s} {'train':>8s} {'test':>8s}")
    for row in rows:
        print(f"{row['seed']:8d} {row['train']:8.4f} {row['test']:8.4f}")
    print(f"{'mean':>8s} {summary['train_mean']:8.4f} {summary['test_mean']:8.4f}")
    print(f"{'best':>8s} {summary['train_best']:8.4f} {summary['test_best']:8.4f}")
    print(f"{'article':>8s} {ARTICLE['train']:8.4f} {ARTICLE['test']:8.4f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
