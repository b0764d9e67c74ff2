"""README's default run, made again on another machine: `python train.py --latent_dim 2` (conv_vae, 20 epochs,
seed 0) must give the params bytes and every epoch's train and test metrics of the run README reports, on any
x86-64 CPU with FMA at any core count, under the default portable CPU bits.

    python train.py --latent_dim 2 --workdir RUN      # the run itself: 17 min on a 2-core Xeon, 50 on an AMD EPYC
    python benchmarks/default_run.py RUN              # compare: exit 1 if the bytes or any epoch's metrics differ
    python benchmarks/default_run.py RUN --record     # the same, and if equal list the run's machine in the JSON
    python benchmarks/default_run.py RUN --reset      # README's run changed on purpose: its metrics must be the
                                                      # run's, whose bytes become the reference (machines restart)
    python benchmarks/default_run.py --smoke          # seconds: a tiny run against itself, writes nothing

The reference is benchmarks/results/default_run.json: the params SHA-256 of README's run, whose per-epoch record
is figures/mnist/metrics.jsonl, and every machine where the same command gave those bytes and those metrics
(named by the run's own config.json: CPU model, vendor, instruction sets, cores, cpu_bits) with its median epoch
seconds, which differ between machines and are not compared.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.golden_bits import machine_record, today, with_machine  # noqa: E402
from benchmarks.provenance import commit, provenance, write_result  # noqa: E402
from vaejax.checkpoint import CONFIG_FILE, ENVIRONMENT_KEY, PARAMS_FILE, read_config_record, read_metrics  # noqa: E402
from vaejax.devices import use_deterministic_kernels  # noqa: E402
from vaejax.errors import VaejaxError  # noqa: E402
from vaejax.files import is_number, read_json, read_regular_file  # noqa: E402

use_deterministic_kernels()  # the smoke run trains in this process, as train.py would

REFERENCE = ROOT / "benchmarks" / "results" / "default_run.json"
README_METRICS = ROOT / "figures" / "mnist" / "metrics.jsonl"
COMMAND = "python train.py --latent_dim 2"
COMPARED = ("epoch", "train", "test")  # of each epoch's record; "seconds" is the machine's own
MAX_PARAMS_BYTES = 64 * 2**20  # conv_vae's 3.35M float32 parameters are 13.4 MB


def compared(records: list[dict]) -> list[dict]:
    """What is compared of each epoch's record."""
    return [{key: record.get(key) for key in COMPARED} for record in records]


def run_record(workdir: Path) -> dict:
    """What the comparison reads of a finished run: its params' SHA-256, each epoch's metrics, its machine."""
    config = read_config_record(workdir / CONFIG_FILE)
    epochs = config.get("epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise VaejaxError(f"{workdir / CONFIG_FILE}: no epoch count")
    params = read_regular_file(workdir / PARAMS_FILE, MAX_PARAMS_BYTES, "a run's params")
    records = read_metrics(workdir, epochs)
    return {"params_sha256": hashlib.sha256(params).hexdigest(),
            "metrics": compared(records),
            "epoch_seconds": [record["seconds"] for record in records if is_number(record.get("seconds"))],
            "model": config.get("model"), "environment": config.get(ENVIRONMENT_KEY) or {}}


def machine_of(found: dict) -> dict:
    """The run's machine as golden_bits.json lists one (golden_bits.with_machine keeps one record per machine)."""
    environment = found["environment"]
    cpu = {"model": environment.get("cpu_model"), "vendor": environment.get("cpu_vendor"),
           "generation": environment.get("cpu_generation"),
           "instruction_sets": (environment.get("cpu_instruction_sets") or "").split()}
    return machine_record(cpu, environment.get("cpu_cores"), "native", today(), commit(), environment.get("jax")) | {
        "cpu_bits": environment.get("cpu_bits"), "models": [found["model"]],
        "epoch_s_median": statistics.median(found["epoch_seconds"]) if found["epoch_seconds"] else None}


def differences(found: dict, params_sha256: str, metrics: list[dict]) -> list[str]:
    """One line per way the run differs from the reference's bytes and metrics."""
    lines = [] if found["params_sha256"] == params_sha256 else [
        f"params sha256 {found['params_sha256'][:16]}..., the reference's {params_sha256[:16]}..."]
    if len(found["metrics"]) != len(metrics):
        lines.append(f"{len(found['metrics'])} epochs, the reference's {len(metrics)}")
    for ours, theirs in zip(found["metrics"], metrics, strict=False):
        if ours != theirs:
            lines.append(f"epoch {theirs.get('epoch')}: test loss {ours['test'].get('loss')}, "
                         f"the reference's {theirs['test'].get('loss')}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=None, help="the workdir of a finished run of the command")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--record", action="store_true", help="list the run's machine in the reference if equal")
    mode.add_argument("--reset", action="store_true", help="the run's bytes become the reference (its metrics "
                                                           "must be README's)")
    parser.add_argument("--reference", default=str(REFERENCE), help="the reference JSON")
    parser.add_argument("--out", default=None, help="also write this comparison as JSON here")
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {})
    if args.smoke and (args.record or args.reset):
        parser.error("--smoke writes nothing: no --record or --reset")
    if not args.smoke and args.run is None:
        parser.error("name the run's workdir")
    with smoke.scratch() as scratch:
        if args.smoke:  # a tiny run is its own reference
            run = smoke.tiny_run(Path(scratch) / "run", "dense_ae")
            found = run_record(run)
            reference = {"params_sha256": found["params_sha256"], "machines": []}
            metrics = found["metrics"]
        else:
            run, found = Path(args.run), run_record(Path(args.run))
            reference = (read_json(Path(args.reference), 2**20, 8) if not args.reset else
                         {"what": f"params SHA-256 of README's `{COMMAND}` (its metrics: "
                                  f"{README_METRICS.relative_to(ROOT)}), and the machines that gave the same",
                          "command": COMMAND, "epochs": len(found["metrics"]), "params_sha256": found["params_sha256"],
                          "machines": []})
            metrics = compared(read_metrics(README_METRICS.parent, reference["epochs"]))
    differ = differences(found, reference["params_sha256"], metrics)
    machine = machine_of(found)
    print("\n".join(differ) or f"{run}: the same params bytes and {len(metrics)} epochs of metrics as README's run "
                                f"({machine['cpu_model']}, {machine['cores']} cores, cpu_bits {machine['cpu_bits']})")
    out = smoke.out_path(args, None, "default_run.json")
    if out is not None:
        write_result(out, {"same": not differ, "differences": differ, "machine": machine,
                           "params_sha256": found["params_sha256"], "provenance": provenance(__file__, argv)})
    if (args.record or args.reset) and not differ:
        reference["machines"], news = with_machine(reference["machines"], machine)
        write_result(Path(args.reference), reference | {"provenance": provenance(__file__, argv)})
        print(f"{machine['cpu_model']} ({machine['cores']} cores): {news} in {args.reference}")
    return 1 if differ else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VaejaxError as error:
        sys.exit(f"default_run.py: {error}")
