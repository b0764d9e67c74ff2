"""Bitwise reproducibility and what it costs: the same training run repeated with the default
(deterministic GPU kernels) and with `--nondeterministic`, compared by the SHA-256 of its params.msgpack.

    python benchmarks/determinism.py [--model conv_vae] [--epochs 3] [--limit N] [--runs 2] [--out FILE] [--smoke]

Each run is `python train.py` in its own process, so that the XLA flag is set (or left out) before
JAX starts. Printed per mode: whether the runs' parameters are byte-identical, and the median
seconds of an epoch (training and evaluation) over the epochs after the first, which compiles;
then the cost of the deterministic mode as a ratio. The flag reaches XLA:GPU only, so on CPU both
modes should match each other bit for bit; on a GPU `--nondeterministic` may not repeat (XLA's
fastest kernels include atomic reductions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402

MODES = {"deterministic": [], "nondeterministic": ["--nondeterministic"]}


def train_once(workdir: Path, model: str, epochs: int, limit: int | None, extra: list[str]) -> dict:
    command = [sys.executable, str(ROOT / "train.py"), "--model", model, "--epochs", str(epochs),
               "--workdir", str(workdir), "--no-tensorboard", "--no-plot_latent", *extra]
    if limit is not None:
        command += ["--limit", str(limit)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"determinism.py: {' '.join(command[1:])} failed: {(result.stderr.strip() or 'no output')[-2000:]}")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {"sha256": hashlib.sha256((workdir / "params.msgpack").read_bytes()).hexdigest(),
            "epoch_seconds": [record["seconds"] for record in records],
            "backend_line": result.stdout.splitlines()[0]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="conv_vae")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/determinism-<backend>.json)")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # dense_ae: conv_vae's batch of 128 is more than the smoke run's images
    args = smoke.parse_args(parser, argv, {"model": "dense_ae", "epochs": 2, "limit": smoke.IMAGES})
    if args.epochs < 2 or args.runs < 2:
        parser.error("--epochs and --runs must be at least 2 (the first epoch compiles; a hash needs a twin)")

    results = {"model": args.model, "epochs": args.epochs, "limit": args.limit, "modes": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for mode, extra in MODES.items():
            runs = [train_once(Path(scratch) / f"{mode}-{index}", args.model, args.epochs, args.limit, extra)
                    for index in range(args.runs)]
            steady = [seconds for run in runs for seconds in run["epoch_seconds"][1:]]
            results["modes"][mode] = {
                "sha256": [run["sha256"] for run in runs],
                "byte_identical": len({run["sha256"] for run in runs}) == 1,
                "median_epoch_s": statistics.median(steady),
                "epoch_seconds": [run["epoch_seconds"] for run in runs],
            }
            results["backend"] = runs[0]["backend_line"]
    modes = results["modes"]
    results["deterministic_cost"] = (modes["deterministic"]["median_epoch_s"]
                                     / modes["nondeterministic"]["median_epoch_s"])
    results["modes_agree"] = modes["deterministic"]["sha256"][0] == modes["nondeterministic"]["sha256"][0]

    backend = results["backend"].split("backend ")[-1].split(":")[0]
    results["provenance"] = provenance(__file__, argv)
    out = smoke.out_path(args, ROOT / f"benchmarks/results/determinism-{backend}.json", "determinism.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results)
    print(results["backend"])
    print(f"{args.model}, {args.epochs} epochs, {args.runs} runs per mode"
          + (f", first {args.limit} images" if args.limit else ""))
    print(f"{'mode':16s} {'byte-identical':>14s} {'median epoch s':>15s}  params sha256 (first run)")
    for mode, row in modes.items():
        print(f"{mode:16s} {str(row['byte_identical']):>14s} {row['median_epoch_s']:15.2f}  {row['sha256'][0][:16]}")
    print(f"deterministic (the default) / nondeterministic epoch time: {results['deterministic_cost']:.3f}; "
          f"the two modes give the same bytes: {results['modes_agree']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
