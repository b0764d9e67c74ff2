"""Where the main job's wall time goes: `python train.py` with every output on, against the same run
with figures and TensorBoard off, measured in the same session.

    python benchmarks/main_job.py [--epochs 3] [--limit 6144] [--repeats 1] [--out FILE] [-- TRAIN FLAGS]
    python benchmarks/main_job.py --smoke     # seconds: dense_ae, one epoch on 64 images

Each run is `train.py` in its own process with JAX_LOG_COMPILES=1 and no persistent XLA cache (every
run compiles what a first run compiles). Printed per variant: wall
seconds, the split train.py reports (setup, training, evaluation, end-of-epoch work in the training
thread, waiting for background work at the end; then the background tasks: checkpoint, figures,
TensorBoard, which overlap training), and the number of XLA compilations. Then the two ratios the
accelerators issue targets: wall time with every output over wall time without figures and
TensorBoard, and host work beyond training and evaluation (end-of-epoch work and the final wait) as
a share of the epochs' training and evaluation. Defaults: the default model (conv_vae, latent 2) on
6144 training images for 3 epochs (the full test set is evaluated each epoch).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402

VARIANTS = {"every output": [], "no figures, no TensorBoard": ["--no-plot_latent", "--no-tensorboard"]}
COMPILE_LINE = "Finished XLA compilation"
# what a run that counts its compilations runs with: each logged, none read from a persistent cache
COUNT_COMPILES = {"JAX_LOG_COMPILES": "1", "JAX_ENABLE_COMPILATION_CACHE": "false"}


def run_once(flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(ROOT / "train.py"), *flags, "--workdir", str(Path(folder) / "run")]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                env={**os.environ, **COUNT_COMPILES})
        wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"main_job.py: {' '.join(command[1:])} failed: {(result.stderr.strip() or 'no output')[-2000:]}")
    split_line = next(line for line in result.stdout.splitlines() if line.startswith("time: "))
    split = {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+)s", split_line)}
    return {"wall_s": wall, "split_s": split, "compilations": result.stderr.count(COMPILE_LINE),
            "backend_line": result.stdout.splitlines()[0]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=6144, help="training images (0: all of them)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (the median wall is used)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("train_flags", nargs="*", help="more train.py flags, after --")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"epochs": 1, "limit": smoke.IMAGES, "train_flags": ["--model", "dense_ae"]})
    base = ["--latent_dim", "2", "--epochs", str(args.epochs), *args.train_flags]
    if args.limit:
        base += ["--limit", str(args.limit)]
    results = {"flags": base, "variants": {}}
    for name, extra in VARIANTS.items():
        runs = [run_once(base + extra) for _ in range(args.repeats)]
        median = min(runs, key=lambda run: abs(run["wall_s"] - statistics.median(r["wall_s"] for r in runs)))
        results["variants"][name] = median | {"repeats_wall_s": [run["wall_s"] for run in runs]}
    full, bare = (results["variants"][name] for name in VARIANTS)
    split = full["split_s"]
    device_work = split["train"] + split["evaluate"]
    results["wall_ratio_every_output_over_bare"] = full["wall_s"] / bare["wall_s"]
    results["host_work_share_of_epochs"] = (split["epoch_end"] + split["wait"]) / device_work
    print(full["backend_line"])
    print("train.py " + " ".join(base))
    print(f"{'variant':28s} {'wall s':>7s} {'setup':>6s} {'train':>6s} {'eval':>6s} {'epoch end':>9s} "
          f"{'wait':>5s} | {'ckpt':>5s} {'figures':>7s} {'tboard':>6s} | {'compiles':>8s}")
    for name, run in results["variants"].items():
        s = run["split_s"]
        print(f"{name:28s} {run['wall_s']:7.1f} {s['setup']:6.1f} {s['train']:6.1f} {s['evaluate']:6.1f} "
              f"{s['epoch_end']:9.1f} {s['wait']:5.1f} | {s.get('checkpoint', 0):5.1f} {s.get('figures', 0):7.1f} "
              f"{s.get('tensorboard', 0):6.1f} | {run['compilations']:8d}")
    print(f"wall with every output / without figures and TensorBoard: "
          f"{results['wall_ratio_every_output_over_bare']:.3f}")
    print(f"host work in the training thread beyond training and evaluation: "
          f"{100 * results['host_work_share_of_epochs']:.1f} % of the epochs' training and evaluation")
    out = smoke.out_path(args, None, "main_job.json")
    if out is not None:
        results["provenance"] = provenance(__file__, argv)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_result(out, results)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
