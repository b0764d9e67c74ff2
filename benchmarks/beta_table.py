"""beta-VAE on a short run: the test set's negative ELBO and its KL at several KL weights.

    python benchmarks/beta_table.py [--betas 0.5 1 4] [--epochs 2] [--limit 30000] [--latent_dim 2] [--out FILE]
    python benchmarks/beta_table.py --smoke     # seconds: one epoch on 64 images, 256 test images

Each beta trains conv_vae as `python train.py --latent_dim 2 --epochs 2 --limit 30000 --beta B` does (seed 0,
the seed's batch and learning rate), and the row holds its last epoch's test metrics: the true negative
ELBO (BCE + KL, beta 1, as every evaluation reports it), its BCE and KL, in nats per image, and the
training loss it minimised (BCE + beta * KL). Written as JSON (default:
benchmarks/results/beta_table.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402
from vaejax.config import Config  # noqa: E402
from vaejax.data import load_bundled_mnist  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.training import train  # noqa: E402

use_deterministic_kernels()  # measured as train.py runs vaejax: its kernel settings, before the backend starts

RESULTS = Path(__file__).resolve().parent / "results" / "beta_table.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=30000, help="the first N training images")
    parser.add_argument("--latent_dim", type=int, default=2)
    parser.add_argument("--out", default=None, help=f"JSON (default: {RESULTS.relative_to(RESULTS.parents[2])})")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"epochs": 1, "limit": smoke.IMAGES})
    dataset = load_bundled_mnist()
    if args.smoke:
        dataset = smoke.small_test_set(dataset)
    rows = []
    with smoke.scratch() as work:
        for beta in args.betas:
            config = Config(latent_dim=args.latent_dim, epochs=args.epochs, limit=args.limit, beta=beta,
                            batch_size=smoke.BATCH if args.smoke else None, workdir=str(Path(work) / f"beta{beta:g}"),
                            tensorboard=False, plot_latent=False).resolved()
            last = train(config, dataset, log=lambda line, beta=beta: print(f"beta {beta:g}: {line}")).history[-1]
            rows.append({"beta": beta, "test_negative_elbo": last["test"]["loss"], "test_bce": last["test"]["bce"],
                         "test_kl": last["test"]["kl"], "train_loss": last["train"]["loss"],
                         "seconds_per_epoch": last["seconds"]})
    record = {"setting": {"model": "conv_vae", "latent_dim": args.latent_dim, "epochs": args.epochs,
                          "limit": args.limit, "seed": 0, "test_images": len(dataset.test_images)},
              "rows": {f"{row['beta']:g}": row for row in rows}, "provenance": provenance(__file__, argv)}
    out = smoke.out_path(args, RESULTS, "beta_table.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, record)
    print(f"{'beta':>6s} {'-ELBO':>9s} {'BCE':>9s} {'KL':>7s} {'train loss':>11s}")
    for row in rows:
        print(f"{row['beta']:6g} {row['test_negative_elbo']:9.2f} {row['test_bce']:9.2f} {row['test_kl']:7.2f} "
              f"{row['train_loss']:11.2f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
