"""The IWAE paper's MNIST table, reproduced: Burda et al. 2016, one stochastic layer of 50 units
(`--model mlp_vae`), dynamically binarized MNIST, batch 20, their schedule (`--schedule iwae`,
3,280 epochs), evaluated with k = 5000 importance samples on the 10,000 test images.

    python benchmarks/iwae_table.py                       # the whole table (days on a CPU; a GPU run)
    python benchmarks/iwae_table.py --epochs 4 --iw_samples 100 --eval_limit 1000   # a quick look
    python benchmarks/iwae_table.py --cost --limit 6000   # seconds per epoch of each objective
    python benchmarks/iwae_table.py --smoke [--cost]      # seconds: one row (one objective) on 64 images

Each row trains with `train.py` (resumable: rerun to continue an interrupted row) and evaluates
with `python -m vaejax.evaluate`; the paper's number is printed beside ours. Results go to `--out`,
by default benchmarks/results/iwae_table.json (or iwae_cost-<backend>.json with --cost).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# -log p(x) in nats, k = 5000 (Burda et al. 2016, Table 1, one stochastic layer).
PAPER = {"vae": 86.76, "iwae_k5": 85.54, "iwae_k50": 84.78}
ROWS = {"vae": ("elbo", 1), "iwae_k5": ("iwae", 5), "iwae_k50": ("iwae", 50)}
COST_ROWS = {"elbo_k1": ("elbo", 1), "iwae_k5": ("iwae", 5), "dreg_k5": ("dreg", 5),
             "iwae_k50": ("iwae", 50), "dreg_k50": ("dreg", 50)}
PAPER_FLAGS = ["--model", "mlp_vae", "--latent_dim", "50", "--binarize", "dynamic", "--schedule", "iwae",
               "--no-plot_latent", "--no-tensorboard"]


def run(command: list[str]) -> float:
    """Run a command, its output passed through; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def train(workdir: Path, objective: str, samples: int, epochs: int, limit: int | None, estimator: str) -> float:
    flags = [*PAPER_FLAGS, "--objective", estimator if objective == "iwae" else objective,
             "--train_samples", str(samples), "--epochs", str(epochs), "--workdir", str(workdir), "--resume"]
    if limit:
        flags += ["--limit", str(limit)]
    return run([sys.executable, "train.py", *flags])


def table(args) -> dict:
    rows = {}
    for name in args.rows:
        objective, samples = ROWS[name]
        workdir = Path(args.runs) / name
        seconds = train(workdir, objective, samples, args.epochs, args.limit, args.estimator)
        evaluate = [sys.executable, "-m", "vaejax.evaluate", "--workdir", str(workdir), "--no-sample_quality",
                    "--iw_samples", str(args.iw_samples)]
        if args.eval_limit:
            evaluate += ["--limit", str(args.eval_limit)]
        run(evaluate)
        result = json.loads((workdir / "evaluation.json").read_text())
        rows[name] = {"nll": result["likelihood"]["iwae"], "nll_sem": result["likelihood"]["iwae_sem"],
                      "elbo": result["likelihood"]["elbo"], "paper": PAPER[name], "setting": result["setting"],
                      "train_seconds_this_call": seconds}
    print(f"\n| row | ours: -log p(x), k = {args.iw_samples} | paper (k = 5000) | ours - paper | epochs |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['nll']:.2f} +- {row['nll_sem']:.2f} | {row['paper']:.2f} | "
              f"{row['nll'] - row['paper']:+.2f} | {row['setting']['epochs']} |")
    return rows


def cost(args) -> dict:
    """Seconds of the second epoch (compiled, warm) of each objective, from the run's metrics."""
    rows = {}
    for name in args.cost_rows:
        objective, samples = COST_ROWS[name]
        workdir = Path(args.runs) / f"cost-{name}"
        flags = [*PAPER_FLAGS, "--objective", objective, "--train_samples", str(samples), "--epochs", "2",
                 "--workdir", str(workdir), "--overwrite", "--limit", str(args.limit)]
        run([sys.executable, "train.py", *flags])
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        rows[name] = {"seconds_per_epoch": records[-1]["seconds"], "images": args.limit}
    base = rows["elbo_k1"]["seconds_per_epoch"]
    print(f"\n| objective | seconds per epoch ({args.limit} images, batch 20) | relative to elbo k = 1 |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds_per_epoch']:.2f} | {row['seconds_per_epoch'] / base:.2f} |")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--epochs", type=int, default=3280, help="passes over the training set (paper: 3280)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (quick looks)")
    parser.add_argument("--iw_samples", type=int, default=5000, help="k of the evaluation (paper: 5000)")
    parser.add_argument("--eval_limit", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--estimator", choices=["iwae", "dreg"], default="iwae",
                        help="gradient of the IWAE rows: the paper's (iwae) or DReG")
    parser.add_argument("--runs", default="runs/iwae_table", help="where the rows' work directories go")
    parser.add_argument("--cost", action="store_true", help="measure seconds per epoch of each objective instead")
    parser.add_argument("--cost_rows", nargs="+", choices=list(COST_ROWS), default=list(COST_ROWS),
                        help="--cost: the objectives measured (default: all; elbo_k1 is the base)")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/iwae_table.json, "
                                                    "with --cost iwae_cost-<backend>.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"rows": ["iwae_k5"], "epochs": 1, "limit": smoke.IMAGES, "iw_samples": 2,
                                           "eval_limit": smoke.IMAGES, "runs": None,
                                           "cost_rows": ["elbo_k1"]})
    if "elbo_k1" not in args.cost_rows:
        parser.error("--cost_rows needs elbo_k1, the base the others are compared with")
    with smoke.scratch() as work:
        args.runs = args.runs or work
        measure(args, argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    import jax

    backend = jax.default_backend()
    if args.cost:
        args.limit = args.limit or 6000
        default, rows = RESULTS / f"iwae_cost-{backend}.json", cost(args)
    else:
        default, rows = RESULTS / "iwae_table.json", table(args)
    path = smoke.out_path(args, default, default.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, {"backend": backend, "device": str(jax.devices()[0]), "args": vars(args),
                        "rows": rows, "provenance": provenance(__file__, argv)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
