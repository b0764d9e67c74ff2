"""The golden hashes: the params SHA-256 of one short seeded run of each seed model with train.py's
default (portable) settings, and every machine they were checked on.

    python benchmarks/golden_bits.py              # check this machine: exit 1 if its bytes differ
    python benchmarks/golden_bits.py --record     # check, and if equal list this machine in the JSON
    taskset -c 0 python benchmarks/golden_bits.py --record    # the same on one core
    python benchmarks/golden_bits.py --reset      # new hashes (the computation changed on purpose): the
                                                  # list starts again with this machine alone
    python benchmarks/golden_bits.py --from_results benchmarks/results/portable_bits.json
                                                  # list the machines where that measurement's portable
                                                  # configuration gave the golden hashes
    python benchmarks/golden_bits.py --smoke      # seconds: dense_ae only, checks, writes nothing

The run is the one benchmarks/portable_bits.py hashes (seed 3, latent 2, one epoch of 16 MNIST images at
batch 8, then 32 test images evaluated), in a fresh process whose settings are train.py's. The suite's
tests/test_golden_bits.py repeats it in-process and fails on a machine whose CPU gives other bytes: CI runs
on whatever machine the day brings, so over time it checks many CPUs; `--record` adds each to
benchmarks/results/golden_bits.json (CPU model, vendor, instruction sets, cores).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import smoke  # noqa: E402
from benchmarks.provenance import commit, provenance, versions, write_result  # noqa: E402

GOLDEN = ROOT / "benchmarks" / "results" / "golden_bits.json"
MODELS = ("conv_vae", "dense_ae")
RESULT = "golden_bits child result: "
# The instruction sets that matter of the QEMU CPU models portable_bits.py emulates (qemu-x86_64 -cpu help).
QEMU_INSTRUCTION_SETS = {"Haswell": ["sse4_2", "avx", "avx2", "fma"], "SandyBridge": ["sse4_2", "avx"],
                         "EPYC": ["sse4_2", "avx", "avx2", "fma"]}


def seeded_run_sha256(model: str) -> str:
    """The params SHA-256 of the golden run of `model` in this process (its XLA settings already made)."""
    from benchmarks.portable_bits import HASH_BATCH, HASH_IMAGES, HASH_TEST_IMAGES, child_train

    with tempfile.TemporaryDirectory(prefix="golden-bits-") as scratch:
        workdir = Path(scratch) / model
        child_train(model, workdir, HASH_IMAGES, HASH_TEST_IMAGES, 1, HASH_BATCH)
        return hashlib.sha256((workdir / "params.msgpack").read_bytes()).hexdigest()


def machine_record(cpu: dict, cores: int, how: str, date: str, commit_id: str, jax_version: str | None) -> dict:
    """One checked machine as golden_bits.json and default_run.json list it; `cpu` as `host_cpu()` gives it."""
    return {"cpu_model": cpu["model"], "cpu_vendor": cpu["vendor"], "cpu_generation": cpu.get("generation"),
            "instruction_sets": cpu["instruction_sets"], "cores": cores, "how": how, "date": date,
            "commit": commit_id, "jax": jax_version}


def today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def machine_entry(how: str = "native") -> dict:
    """This machine, as it is now."""
    from vaejax.devices import host_cpu

    cpu = host_cpu()
    return machine_record(cpu, cpu["cores"], how, today(), commit(), versions().get("jax"))


def same_machine(a: dict, b: dict) -> bool:
    """Whether two records name one kind of machine: a virtual machine's model name ("AMD EPYC") can stand for
    CPUs of several generations and instruction sets, so those are compared too (the generation where both have
    it: earlier records lack it)."""
    keys = ("cpu_model", "cpu_vendor", "instruction_sets", "cores", "how")
    generations = a.get("cpu_generation"), b.get("cpu_generation")
    return all(a.get(key) == b.get(key) for key in keys) and (None in generations or len(set(generations)) == 1)


def with_machine(machines: list[dict], entry: dict) -> tuple[list[dict], str]:
    """The list of checked machines with `entry` in it, one record per machine, and what changed: a record that
    already covers `entry`'s models stays as it is; otherwise `entry` replaces it, with every model either lists."""
    before = [old for old in machines if same_machine(old, entry)]
    models = {model for old in before for model in old.get("models", ())}
    if set(entry["models"]) <= models:
        return machines, "already listed with these models"
    others = [old for old in machines if not same_machine(old, entry)]
    return others + [entry | {"models": sorted(models | set(entry["models"]))}], "listed"


def list_measured_machines(golden_path: Path, measured_path: Path) -> int:
    """Add to the golden JSON each environment of a portable_bits.py measurement whose portable
    configuration gave the golden hashes (native at each core count, or under qemu)."""
    golden, measured = json.loads(golden_path.read_text()), json.loads(measured_path.read_text())
    cpu = measured["provenance"]["machine"]["cpu"]
    measured_path = measured_path.resolve()
    shown = measured_path.relative_to(ROOT) if measured_path.is_relative_to(ROOT) else measured_path
    for environment, row in measured["configs"]["portable"]["environments"].items():
        digests = row.get("sha256", {})
        if not digests or any(golden["sha256"].get(model) != digest for model, digest in digests.items()):
            print(f"{environment}: {'no hashes' if not digests else 'other hashes'}: not listed")
            continue
        qemu_model, _, cores = environment.rpartition("-")
        how = "native" if qemu_model == "native" else f"qemu-x86_64 -cpu {qemu_model}"
        entry = machine_record(cpu, int(cores), how, measured["provenance"]["date"][:10],
                               measured["provenance"]["commit"], measured["provenance"]["versions"].get("jax"))
        entry |= {"models": sorted(digests), "source": str(shown)}
        if qemu_model != "native":  # the emulated CPU's instruction sets, on the host named above
            entry |= {"cpu_model": f"{qemu_model} (emulated on {cpu['model']})",
                      "instruction_sets": QEMU_INSTRUCTION_SETS.get(qemu_model)}
        elif measured["core_counts_faked"] and int(cores) > cpu["cores"]:
            entry["cores_faked"] = "XLA:CPU sized its thread pools by this count (an LD_PRELOAD shim)"
        golden["machines"], news = with_machine(golden["machines"], entry)
        print(f"{environment}: {news}")
    write_result(golden_path, golden)
    return 0


def child(models: list[str]) -> None:
    from vaejax.devices import use_deterministic_kernels

    use_deterministic_kernels()  # as train.py, before the backend starts
    print(RESULT + json.dumps({model: seeded_run_sha256(model) for model in models}), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--record", action="store_true", help="list this machine in the JSON if its bytes are golden")
    mode.add_argument("--reset", action="store_true", help="write this machine's hashes as the golden ones")
    mode.add_argument("--from_results", default=None, help="a portable_bits.py JSON whose machines to list")
    parser.add_argument("--golden", default=str(GOLDEN), help="the JSON (default: benchmarks/results/golden_bits.json)")
    parser.add_argument("--out", default=None, help="also write this check's result as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"models": ["dense_ae"]}, outputs=("out",))
    if args.child:
        child(args.models)
        return 0
    if args.smoke and (args.record or args.reset or args.from_results):
        parser.error("--smoke writes nothing: no --record, --reset or --from_results")
    if args.from_results:
        return list_measured_machines(Path(args.golden), Path(args.from_results))
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--models", *args.models],
                            capture_output=True, text=True, cwd=ROOT, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"golden_bits.py: the seeded runs failed: {(result.stderr or result.stdout)[-1500:]}")
    found = json.loads(lines[-1][len(RESULT):])
    path = Path(args.golden)
    golden = json.loads(path.read_text()) if path.is_file() else {"sha256": {}, "machines": []}
    here = machine_entry()
    if args.reset:
        golden = {"what": "params SHA-256 of benchmarks/portable_bits.py's seeded run with train.py's default settings",
                  "sha256": found, "machines": [here | {"models": sorted(found)}],
                  "provenance": provenance(__file__, argv)}
        write_result(path, golden)
        print(f"golden hashes reset to this machine's ({here['cpu_model']}): written to {path}")
        return 0
    differ = {model: digest for model, digest in found.items() if golden["sha256"].get(model) != digest}
    for model, digest in found.items():
        verdict = f"DIFFERS from {golden['sha256'].get(model, '?')[:16]}" if model in differ else "golden"
        print(f"{model:9s} {digest[:16]}  {verdict}")
    out = smoke.out_path(args, None, "golden_bits.json")
    if out is not None:
        write_result(out, {"sha256": found, "golden": not differ, "machine": here,
                           "provenance": provenance(__file__, argv)})
    if differ:
        print(f"golden_bits.py: this machine ({here['cpu_model']}, {' '.join(here['instruction_sets'])}, "
              f"{here['cores']} cores) gives other bytes", file=sys.stderr)
        return 1
    if args.record:
        golden["machines"], change = with_machine(golden["machines"], here | {"models": sorted(found)})
        if change == "listed":
            write_result(path, golden)
        print(f"{here['cpu_model']} ({here['cores']} cores): {change} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
