"""XLA:CPU's kernel choices for vaejax's training step, measured in one run: which library computes the
convolutions and dots (YNNPACK, Eigen, oneDNN), the portable settings or the machine's own, one or two
micro-batches, and (conv models) how the convolutions are written; with, for each choice, whether its
bits stay the same at 1 and 2 cores.

    python benchmarks/cpu_kernels.py [--models conv_vae conv_cvae mlp_vae dense_ae] [--choices ...]
                                     [--micro_batches 1 2] [--conv_impls xla both] [--repeats 5] [--out FILE]
    python benchmarks/cpu_kernels.py --smoke     # seconds: dense_ae, two choices, tiny windows

Each (choice, model, micro-batches, conv_impl) is timed in its own process (XLA reads its flags when the
backend starts): milliseconds per training step of the real Trainer at the model's seed batch size
(benchmarks/step_timing.py: median over `--repeats` windows, compile excluded), and the ratio to the
`machine` choice (the XLA:CPU defaults, vaejax's default before portable bits) of the same model and
micro-batch count measured in the same run. A choice is XLA_FLAGS given before vaejax adds its own
(`use_deterministic_kernels` keeps a flag the user set), with `cpu_bits` portable, machine, or None
(XLA:CPU's own settings):

    machine          XLA:CPU's defaults: YNNPACK convolutions, dots and reductions, per-CPU kernels
    portable         vaejax's default (vaejax.devices.PORTABLE_CPU_XLA_FLAGS): reductions out of YNNPACK, ...
    portable-minus-PART   the portable settings less one part (benchmarks/portable_bits.py's PORTABLE_PARTS:
                          platform_dependent_math, max_isa_avx, ynn_no_reduce, eigen_default_contraction): its cost
    portable+conv_eigen   the same with convolutions in Eigen (threaded) instead of YNNPACK
    portable+dot_eigen    the same with dots in Eigen
    portable+eigen        both
    portable+onednn_dot   the same with every dot in oneDNN
    portable+conv_eigen_1thread   convolutions in Eigen on one thread (Eigen's threads split sums by core count)
    machine+conv_eigen    `--cpu_bits machine`: XLA:CPU's defaults with the convolutions in Eigen (threaded)

With `--rounds N` every cell is timed in N processes, the cells' order reversed every other round (this
shared machine's speed drifts), and a cell's time is the median over its rounds.

Then the bits: for each choice, the params SHA-256 of the golden run (benchmarks/golden_bits.py: 2 seeded
steps, then 32 test images) of each conv model and dense_ae with one core (`taskset -c 0`) and with every core;
a choice whose two hashes differ
depends on the core count and cannot be the portable default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.portable_bits import PORTABLE_PARTS, settings  # noqa: E402
from benchmarks.provenance import provenance, write_result  # noqa: E402

YNN_TYPE = "--xla_cpu_experimental_ynn_fusion_type="
CHOICES = {
    "machine": (None, []),
    "portable": ("portable", []),
    "portable+conv_eigen": ("portable", [YNN_TYPE + "-reduce,-individual_convolution"]),
    "portable+dot_eigen": ("portable", [YNN_TYPE + "-reduce,-individual_dot"]),
    "portable+eigen": ("portable", [YNN_TYPE + "-reduce,-individual_convolution,-individual_dot"]),
    "portable+onednn_dot": ("portable", ["--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=dot"]),
    "portable+conv_eigen_1thread": ("portable", [YNN_TYPE + "-reduce,-individual_convolution",
                                                 "--xla_cpu_multi_thread_eigen=false"]),
    "machine+conv_eigen": ("machine", []),  # train.py --cpu_bits machine (vaejax.devices.MACHINE_CPU_XLA_FLAGS)
}
# The portable settings less one part each, given as XLA:CPU's own settings plus the other parts' flags and
# environment variables: what each part costs (portable_bits.py --ablate: what each part is needed for).
LESS_ONE_PART = {f"portable-minus-{part}": settings([other for other in PORTABLE_PARTS if other != part])
                 for part in PORTABLE_PARTS}
CHOICES |= {name: (None, found["XLA_FLAGS"].split()) for name, found in LESS_ONE_PART.items()}
CHOICE_ENVIRONMENT = {name: {variable: value for variable, value in found.items() if variable != "XLA_FLAGS"}
                      for name, found in LESS_ONE_PART.items()}  # a choice's variables besides XLA_FLAGS
CONV_MODELS = ("conv_vae", "conv_cvae")
WINDOW_STEPS = {"conv_vae": 10, "conv_cvae": 10, "mlp_vae": 200, "dense_ae": 200}  # about a second a window
RESULT = "cpu_kernels child result: "  # the line a child prints its JSON on


def child(args: argparse.Namespace) -> None:
    """In a fresh process: set this choice's flags before JAX starts, then time or hash."""
    cpu_bits, flags = CHOICES[args.choice]
    os.environ["XLA_FLAGS"] = " ".join([*os.environ.get("XLA_FLAGS", "").split(), *flags])
    os.environ.update(CHOICE_ENVIRONMENT.get(args.choice, {}))
    from vaejax.devices import use_deterministic_kernels

    use_deterministic_kernels(True, cpu_bits)
    from vaejax.data import load_bundled_mnist

    mnist = load_bundled_mnist()
    found = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "cores_seen": len(os.sched_getaffinity(0))}
    if args.child == "time":
        from benchmarks.step_timing import time_vaejax

        found |= time_vaejax(args.models[0], mnist, args.steps or WINDOW_STEPS[args.models[0]], args.repeats,
                             args.micro_batches[0], **({"conv_impl": args.conv_impls[0]}
                                                       if args.models[0] in CONV_MODELS else {}))
    else:
        from benchmarks.golden_bits import seeded_run_sha256

        found["sha256"] = {model: seeded_run_sha256(model) for model in args.models}
    print(RESULT + json.dumps(found), flush=True)


def run_child(arguments: list[str], one_core: bool = False) -> dict:
    """A child's JSON result, or {"error": its last output line} (XLA:CPU refuses some choices for some models)."""
    command = [*(["taskset", "-c", "0"] if one_core else []), sys.executable, str(Path(__file__).resolve()),
               *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode != 0 or not lines:
        output = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        return {"error": output[-1][-300:]}
    return json.loads(lines[-1][len(RESULT):])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["conv_vae", "conv_cvae", "mlp_vae", "dense_ae"])
    parser.add_argument("--choices", nargs="+", default=list(CHOICES), choices=list(CHOICES))
    parser.add_argument("--micro_batches", nargs="+", type=int, default=[1, 2],
                        help="counts tried for the conv models (the dense ones: 1)")
    parser.add_argument("--conv_impls", nargs="+", default=["xla"], help="vaejax.models.CONV_IMPLS tried (conv models)")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per process")
    parser.add_argument("--rounds", type=int, default=1, help="processes per cell, in alternating order")
    parser.add_argument("--steps", type=int, default=None, help="steps a window (default: about a second's)")
    parser.add_argument("--no-bits", dest="bits", action="store_false", help="skip the 1-core/all-cores hashes")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/cpu_kernels.json)")
    parser.add_argument("--choice", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["time", "hash"], default=None, help=argparse.SUPPRESS)
    smoke.add_flag(parser)
    return parser


def child_arguments(choice: str, mode: str, models: list[str], micro_batches: int = 1, conv_impl: str = "xla",
                    args: argparse.Namespace | None = None) -> list[str]:
    extra = ["--repeats", str(args.repeats)] + (["--steps", str(args.steps)] if args.steps else []) if args else []
    return ["--child", mode, "--choice", choice, "--models", *models, "--micro_batches", str(micro_batches),
            "--conv_impls", conv_impl, *extra]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"models": ["dense_ae"], "choices": ["portable"], "repeats": 1,
                                           "steps": 2})
    if args.child:
        child(args)
        return
    cells = [(choice, model, parts, impl) for model in args.models
             for parts in (args.micro_batches if model in CONV_MODELS else [1])
             for impl in (args.conv_impls if model in CONV_MODELS else ["xla"]) for choice in args.choices]
    rounds = {cell: [] for cell in cells}
    for round_index in range(args.rounds):
        for cell in cells if round_index % 2 == 0 else reversed(cells):
            choice, model, parts, impl = cell
            started = time.perf_counter()
            row = run_child(child_arguments(choice, "time", [model], parts, impl, args))
            rounds[cell].append(row | {"wall_s": round(time.perf_counter() - started, 1)})
            print(f"{choice:22s} {model:9s} x{parts} {impl:15s} " + (
                f"failed: {row['error']}" if "error" in row else
                f"{row['ms_per_step']:8.2f} ms/step (windows {[round(t, 1) for t in row['repeats_ms_per_step']]})"),
                flush=True)
    timings = []
    for (choice, model, parts, impl), rows in rounds.items():
        cell = {"choice": choice, "model": model, "micro_batches": parts, "conv_impl": impl}
        if any("error" in row for row in rows):
            timings.append(cell | {"error": next(row["error"] for row in rows if "error" in row)})
            continue
        timings.append(cell | {"ms_per_step": statistics.median(row["ms_per_step"] for row in rows),
                               "rounds_ms_per_step": [row["ms_per_step"] for row in rows],
                               "loop": rows[0]["loop"], "xla_flags": rows[0]["xla_flags"],
                               "compile_s": statistics.median(row["compile_s"] for row in rows)})
    failed = [row for row in timings if "error" in row]
    timings = [row for row in timings if "error" not in row]
    for row in timings:
        peer = [other for other in timings if other["choice"] == "machine" and other["model"] == row["model"]
                and other["micro_batches"] == row["micro_batches"] and other["conv_impl"] == "xla"]
        row["ratio_to_machine"] = row["ms_per_step"] / peer[0]["ms_per_step"] if peer else None
    bits = {}
    if args.bits:
        hashed = [model for model in (*CONV_MODELS, "dense_ae") if model in args.models] or args.models
        for choice in args.choices:
            one, every = (run_child(child_arguments(choice, "hash", hashed), one_core).get("sha256")
                          for one_core in (True, False))
            if one is None or every is None:
                bits[choice] = {"error": "a hashed run failed"}
                continue
            bits[choice] = {"one_core": one, "every_core": every,
                            "same_at_1_and_all_cores": {model: one[model] == every[model] for model in hashed}}
            print(f"{choice:22s} bits at 1 and {len(os.sched_getaffinity(0))} cores agree: "
                  f"{bits[choice]['same_at_1_and_all_cores']}", flush=True)
    fastest = {}
    for model in args.models:
        rows = [row for row in timings if row["model"] == model]
        fastest[model] = min(rows, key=lambda row: row["ms_per_step"]) | {}
        # portable: the bits were hashed and agree at 1 and all cores (unknown without them)
        portable = [row for row in rows if CHOICES[row["choice"]][0] == "portable" and args.bits
                    and all(bits[row["choice"]].get("same_at_1_and_all_cores", {"failed": False}).values())]
        best = min(portable, key=lambda row: row["ms_per_step"]) if portable else None
        fastest[model] = {"fastest": {key: fastest[model][key] for key in ("choice", "micro_batches", "conv_impl",
                                                                           "ms_per_step")},
                          "fastest_portable": None if best is None else {
                              key: best[key] for key in ("choice", "micro_batches", "conv_impl", "ms_per_step")}}
    results = {"what": "ms per training step at each model's seed batch size; median of each process's windows",
               "cores": len(os.sched_getaffinity(0)), "choices": {
                   name: {"cpu_bits": bits_mode, "xla_flags": flags, "environment": CHOICE_ENVIRONMENT.get(name, {})}
                   for name, (bits_mode, flags) in CHOICES.items() if name in args.choices},
               "timings": timings, "failed": failed, "bits": bits, "best": fastest,
               "provenance": provenance(__file__, argv)}
    out = smoke.out_path(args, ROOT / "benchmarks/results/cpu_kernels.json", "cpu_kernels.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results)
    for model, row in fastest.items():
        print(f"{model}: fastest {row['fastest']}; fastest with portable bits {row['fastest_portable']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
