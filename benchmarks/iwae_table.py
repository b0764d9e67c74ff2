"""The IWAE paper's MNIST table, reproduced: Burda et al. 2016, one stochastic layer of 50 units
(`--model mlp_vae`), dynamically binarized MNIST, batch 20, their schedule (`--schedule iwae`,
3,280 epochs), evaluated with k = 5000 importance samples on the 10,000 test images.

    python benchmarks/iwae_table.py                       # the whole table (days on a CPU; a GPU run)
    python benchmarks/iwae_table.py --epochs 4 --iw_samples 100 --eval_limit 1000   # a quick look
    python benchmarks/iwae_table.py --cost --limit 6000   # seconds per epoch of each objective

Each row trains with `train.py` (resumable: rerun to continue an interrupted row) and evaluates
with `python -m vaejax.evaluate`; the paper's number is printed beside ours. Results go to
benchmarks/results/iwae_table.json (or iwae_cost-<backend>.json with --cost).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    for name, (objective, samples) in COST_ROWS.items():
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


def main() -> None:
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
    parser.add_argument("--results", default=str(RESULTS), help="folder for the JSON (default: %(default)s)")
    args = parser.parse_args()
    import jax

    backend = jax.default_backend()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.cost:
        args.limit = args.limit or 6000
        path, rows = results / f"iwae_cost-{backend}.json", cost(args)
    else:
        path, rows = results / "iwae_table.json", table(args)
    path.write_text(json.dumps({"backend": backend, "device": str(jax.devices()[0]), "args": vars(args),
                                "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
