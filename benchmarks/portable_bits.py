"""Portable bits on XLA:CPU (issue 19): which XLA flags make a seeded run's bytes independent of the CPU's
instruction set, vendor and core count, proved on CPUs this machine lacks, and what they cost.

    python benchmarks/portable_bits.py [--configs default portable train_py] [--ablate] [--envs native-1 native-2
                                       native-16 Haswell-1 SandyBridge-1 EPYC-1] [--models conv_vae dense_ae]
                                       [--skip CONFIG@ENV ...] [--timing_repeats 3] [--jobs 1] [--out FILE]
    python benchmarks/portable_bits.py --smoke     # seconds: dense_ae, native at 1 and 2 threads, tiny timing

Each (configuration, environment) runs in a fresh process: the same seeded short training of every model
(vaejax's `train`, one epoch of `--images` 16 images at `--batch_size` 8, seed 3, then `--test_images` 32
evaluated: tiny, because under qemu JAX runs some hundred times slower), recording the SHA-256 of each run's
params.msgpack. A configuration is XLA_FLAGS (after the flag train.py adds) and environment variables;
`default` is XLA:CPU's own settings, `portable` the candidate (train.py's default), `train_py` what train.py
itself sets on the CPU it runs on (the candidate, or the machine mode on a CPU without FMA, where the candidate
hangs: `--envs SandyBridge-1` shows both),
and `--ablate` adds the candidate minus each of its parts, to find the smallest set (natively only).
An environment is native or
`qemu-x86_64 -cpu MODEL` (Debian's qemu-user, which emulates AVX, AVX2 and FMA but not AVX-512), at a core
count: natively 1 is `taskset -c 0`; any count is also what XLA:CPU sizes its thread pools by, faked with an
LD_PRELOAD shim over sched_getaffinity, sysconf and get_nprocs (built with gcc into a temporary folder).
`--emulated_models` trims what runs under qemu (conv_vae's 2 steps there take over 20 CPU minutes). Emulated
environments are skipped, and the JSON says so, when qemu-x86_64 is absent.

Then the cost: `--timing_model` conv_vae at batch 128, each configuration in its own process, alternating order,
`--timing_repeats` times; per process the median epoch seconds (`--timing_images` images, evaluation of 256 test
images) over the epochs after the first, which compiles; the ratio portable / default of the medians over processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
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

# The candidate, in parts; each is XLA flags and environment variables set before JAX starts.
PORTABLE_PARTS = {
    # exp, log, tanh and the like as LLVM's fast approximations, which differ per instruction set
    "platform_dependent_math": {"flags": ["--xla_cpu_enable_platform_dependent_math=false"], "env": {}},
    # the code XLA generates itself (fusions, elementwise) for AVX at most, whatever the host has
    "max_isa_avx": {"flags": ["--xla_cpu_max_isa=AVX"], "env": {}},
    # reductions out of YNNPACK (which picks kernels per CPU at run time) into XLA's own code
    "ynn_no_reduce": {"flags": ["--xla_cpu_experimental_ynn_fusion_type=-reduce"], "env": {}},
    # Eigen's contractions in Eigen's own kernel (compiled for jaxlib's baseline) instead of the custom one
    "eigen_default_contraction": {"flags": [], "env": {"TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL": "false"}},
}
# Further parts --extra_parts can add to the candidate, to test stronger sets.
EXTRA_PARTS = {
    "ynn_no_dot_conv": {"flags": ["--xla_cpu_experimental_ynn_fusion_type=-reduce,-individual_convolution,"
                                  "-individual_dot"], "env": {}},
    "eigen_one_thread": {"flags": ["--xla_cpu_multi_thread_eigen=false"], "env": {}},
}
ENVIRONMENTS = ("native-1", "native-2", "native-16", "Haswell-1", "SandyBridge-1", "EPYC-1")
QEMU = "qemu-x86_64"
SEED, LATENT_DIM = 3, 2
HASH_IMAGES, HASH_BATCH, HASH_TEST_IMAGES = 16, 8, 32  # a hashed run: 2 steps, then 32 test images (golden_bits.py)
TIMING_BATCH, TIMING_TEST_IMAGES = 128, 256
TRAIN_PY = "train_py"  # the configuration whose child sets its XLA flags as train.py does
RESULT = "portable_bits child result: "  # the line a child prints its JSON on
SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int fake(void) { const char *value = getenv("PORTABLE_BITS_CPUS"); return value ? atoi(value) : 0; }
int sched_getaffinity(pid_t pid, size_t size, cpu_set_t *mask) {
    int n = fake();
    if (n <= 0) return ((int (*)(pid_t, size_t, cpu_set_t *))dlsym(RTLD_NEXT, "sched_getaffinity"))(pid, size, mask);
    memset(mask, 0, size);
    for (int cpu = 0; cpu < n && (size_t)cpu < size * 8; cpu++) CPU_SET_S(cpu, size, mask);
    return 0;
}
long sysconf(int name) {
    int n = fake();
    if (n > 0 && (name == _SC_NPROCESSORS_ONLN || name == _SC_NPROCESSORS_CONF)) return n;
    return ((long (*)(int))dlsym(RTLD_NEXT, "sysconf"))(name);
}
int get_nprocs(void) { int n = fake(); return n > 0 ? n : ((int (*)(void))dlsym(RTLD_NEXT, "get_nprocs"))(); }
int get_nprocs_conf(void) {
    int n = fake();
    return n > 0 ? n : ((int (*)(void))dlsym(RTLD_NEXT, "get_nprocs_conf"))();
}
"""


def configurations(names: list[str], ablate: bool, extra_parts: list[str]) -> dict[str, list[str]]:
    """Each configuration by name -> the parts it sets: default none, portable the candidate (with
    `extra_parts`), train_py none set here (the child asks for train.py's default, as train.py does: on a CPU
    without FMA that is the machine mode), and with `ablate` the candidate minus each part."""
    candidate = [*PORTABLE_PARTS, *extra_parts]
    known = {"default": [], "portable": candidate, TRAIN_PY: []}
    unknown = set(names) - set(known)
    if unknown:
        raise SystemExit(f"portable_bits.py: unknown configuration(s) {', '.join(sorted(unknown))}")
    if ablate:
        known |= {f"portable-minus-{part}": [other for other in candidate if other != part] for part in candidate}
    chosen = {name: known[name] for name in names}
    return chosen | {name: parts for name, parts in known.items() if name.startswith("portable-minus-")}


def settings(parts: list[str]) -> dict[str, str]:
    """The environment of a child with `parts` set: XLA_FLAGS and any other variables."""
    every = PORTABLE_PARTS | EXTRA_PARTS
    flags = [flag for part in parts for flag in every[part]["flags"]]
    ynn = [flag for flag in flags if flag.startswith("--xla_cpu_experimental_ynn_fusion_type=")]
    if len(ynn) > 1:  # XLA keeps only the last: the longest list of exclusions stands for all
        flags = [flag for flag in flags if flag not in ynn] + [max(ynn, key=len)]
    env = {name: value for part in parts for name, value in every[part]["env"].items()}
    return {"XLA_FLAGS": " ".join(flags), **env}


def parse_environment(name: str) -> tuple[str | None, int]:
    """`native-2` -> (None, 2); `Haswell-1` -> ("Haswell", 1): the qemu CPU model (None: native) and cores."""
    model, _, cores = name.rpartition("-")
    if not model or not cores.isdigit() or int(cores) < 1:
        raise SystemExit(f"portable_bits.py: an environment is native-N or QEMU_CPU_MODEL-N, not {name!r}")
    return (None if model == "native" else model), int(cores)


def build_shim(folder: Path) -> Path | None:
    """The LD_PRELOAD library that makes a process see PORTABLE_BITS_CPUS cores; None without gcc."""
    if shutil.which("gcc") is None:
        return None
    source, library = folder / "cpus.c", folder / "cpus.so"
    source.write_text(SHIM_SOURCE)
    built = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
                           capture_output=True, text=True)
    return library if built.returncode == 0 else None


def child_command(environment: str, shim: Path | None, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment that run this script's child under `environment`."""
    qemu_model, cores = parse_environment(environment)
    fake = {"PORTABLE_BITS_CPUS": str(cores), "LD_PRELOAD": str(shim)} if shim is not None else {}
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    extra = {}
    if qemu_model is None:
        extra = fake
    else:  # the shim goes to the emulated Python only, not to qemu itself
        command = [QEMU, "-cpu", qemu_model, *[part for name, value in fake.items() for part in
                                                ("-E", f"{name}={value}")], *command]
    if cores == 1 and (qemu_model is None or shim is None):  # emulated runs unpinned, to run side by side
        command = ["taskset", "-c", "0", *command]
    return command, extra


def run_child(environment: str, parts: list[str], shim: Path | None, arguments: list[str], timeout: float) -> dict:
    """One child process: its JSON result, or why there is none, with its wall seconds."""
    command, extra = child_command(environment, shim, arguments)
    env = os.environ | settings(parts) | extra
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as expired:  # what it last said tells a hang from slowness
        said = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr or ""
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": round(time.perf_counter() - started, 1),
                "last_output": said.strip().splitlines()[-3:]}
    wall = round(time.perf_counter() - started, 1)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr.strip() or result.stdout.strip() or "no output")[-1500:], "wall_s": wall}
    return json.loads(lines[-1][len(RESULT):]) | {"wall_s": wall}


def child_train(model: str, workdir: Path, images: int, test_images: int, epochs: int, batch_size: int):
    """vaejax's seeded training, as train.py runs it, on the first `images` training and `test_images` test images."""
    from vaejax.config import Config
    from vaejax.data import load_bundled_mnist
    from vaejax.training import train

    dataset = load_bundled_mnist().limited(images)
    dataset = dataclasses.replace(dataset, test_images=dataset.test_images[:test_images],
                                  test_labels=dataset.test_labels[:test_images])
    config = Config(model=model, latent_dim=LATENT_DIM, epochs=epochs, batch_size=batch_size, seed=SEED,
                    workdir=str(workdir), tensorboard=False, plot_latent=False).resolved()
    return train(config, dataset, log=lambda line: None)


def child(args: argparse.Namespace) -> None:
    """Runs in the child process: hash each model's seeded run, or time one model's epochs."""
    from vaejax.devices import use_deterministic_kernels

    # the GPU flag as train.py adds it; the CPU settings are this configuration's alone, from its environment,
    # except train_py's, which are train.py's own choice on this CPU
    use_deterministic_kernels(True, cpu_bits="portable" if args.as_train_py else None)
    import jax

    from vaejax.devices import cpu_bits_in_force, cpu_lacks_fma

    found = {"cpu_bits": cpu_bits_in_force(), "cpu_lacks_fma": cpu_lacks_fma(),
             "cores_seen": len(os.sched_getaffinity(0)), "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "backend": jax.default_backend()}
    with tempfile.TemporaryDirectory(prefix="portable-bits-") as scratch:
        if args.child == "hash":
            found["sha256"] = {}
            for model in args.models:
                workdir = Path(scratch) / model
                child_train(model, workdir, args.images, args.test_images, 1, args.batch_size)
                found["sha256"][model] = hashlib.sha256((workdir / "params.msgpack").read_bytes()).hexdigest()
        else:
            result = child_train(args.timing_model, Path(scratch) / "timing", args.timing_images, TIMING_TEST_IMAGES,
                                 args.timing_epochs, TIMING_BATCH)
            found["epoch_seconds"] = [record["seconds"] for record in result.history]
    print(RESULT + json.dumps(found), flush=True)


def hash_table(configs: dict[str, list[str]], environments: list[str], shim: Path | None, args: argparse.Namespace
               ) -> dict:
    """Every (configuration, environment) child's hashes, per configuration whether all environments agree."""
    runnable = [name for name in environments if parse_environment(name)[0] is None or shutil.which(QEMU)]
    skipped = sorted(set(environments) - set(runnable))
    arguments = ["--child", "hash", "--images", str(args.images), "--batch_size", str(args.batch_size),
                 "--test_images", str(args.test_images), "--models"]
    # ablations natively only: an emulated run takes some ten minutes
    jobs = [(config, environment) for config in configs for environment in runnable
            if f"{config}@{environment}" not in args.skip
            and not (config.startswith("portable-minus-") and parse_environment(environment)[0])]
    jobs.sort(key=lambda job: parse_environment(job[1])[0] is None)  # the long emulated runs first

    def one(job: tuple[str, str]) -> dict:
        config, environment = job
        emulated = parse_environment(environment)[0] is not None
        models = (args.emulated_models or args.models) if emulated else args.models
        as_train_py = ["--as_train_py"] if config == TRAIN_PY else []
        return run_child(environment, configs[config], shim, [*arguments, *models, *as_train_py],
                         args.timeout if emulated else args.timeout / 10)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(jobs, pool.map(one, jobs), strict=True))
    table = {}
    for config, parts in configs.items():
        rows = {environment: results[config, environment] for environment in runnable
                if (config, environment) in results}
        for environment, row in rows.items():
            status = row.get("error", "ok")[:80]
            print(f"{config:40s} {environment:16s} {row['wall_s']:7.1f} s  "
                  + (" ".join(f"{model} {digest[:12]}" for model, digest in row.get("sha256", {}).items())
                     or status), flush=True)
        agree = {}
        for model in args.models:
            digests = {row["sha256"][model] for row in rows.values() if model in row.get("sha256", {})}
            complete = all("sha256" in row for row in rows.values())
            agree[model] = len(digests) == 1 and complete if digests else None
        table[config] = {"parts": parts, "settings": settings(parts), "environments": rows,
                         "distinct_hashes": {model: len({row["sha256"][model] for row in rows.values()
                                                         if model in row.get("sha256", {})}) for model in args.models},
                         "all_environments_agree": agree}
    return {"environments_run": runnable, "environments_skipped": skipped,
            "skipped_because": f"no {QEMU} (apt-get install qemu-user)" if skipped else None, "configs": table}


def timing(shim: Path | None, args: argparse.Namespace) -> dict:
    """portable against default epoch time natively, each in its own process, in alternating order."""
    arguments = ["--child", "time", "--timing_model", args.timing_model, "--timing_images", str(args.timing_images),
                 "--timing_epochs", str(args.timing_epochs)]
    parts = {"default": [], "portable": [*PORTABLE_PARTS, *args.extra_parts]}
    native = f"native-{len(os.sched_getaffinity(0))}"
    runs = {name: [] for name in parts}
    for repeat in range(args.timing_repeats):
        for name in (list(parts) if repeat % 2 == 0 else list(reversed(parts))):
            row = run_child(native, parts[name], None, arguments, args.timeout)
            if "error" in row:
                raise SystemExit(f"portable_bits.py: timing {name} failed: {row['error']}")
            row["median_epoch_s"] = statistics.median(row["epoch_seconds"][1:])
            runs[name].append(row)
            print(f"timing {name:9s} repeat {repeat}: median epoch {row['median_epoch_s']:.3f} s "
                  f"({row['epoch_seconds']})", flush=True)
    medians = {name: statistics.median(row["median_epoch_s"] for row in rows) for name, rows in runs.items()}
    steps = -(-args.timing_images // TIMING_BATCH)
    return {"model": args.timing_model, "batch_size": TIMING_BATCH, "images": args.timing_images,
            "steps_per_epoch": steps, "epochs": args.timing_epochs, "repeats": args.timing_repeats,
            "environment": native,
            "what": "median over processes of each process's median epoch seconds (training steps and evaluation "
                    "of 256 test images) over the epochs after the first",
            "median_epoch_s": medians,
            "ms_per_step_upper_bound": {name: 1000 * seconds / steps for name, seconds in medians.items()},
            "ratio_portable_over_default": medians["portable"] / medians["default"], "runs": runs}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["default", "portable"])
    parser.add_argument("--ablate", action="store_true", help="also the candidate minus each of its parts")
    parser.add_argument("--extra_parts", nargs="*", default=[], choices=list(EXTRA_PARTS),
                        help="add these parts to the candidate")
    parser.add_argument("--envs", nargs="+", default=list(ENVIRONMENTS),
                        help="native-N or QEMU_CPU_MODEL-N (qemu-x86_64 -cpu help lists the models)")
    parser.add_argument("--models", nargs="+", default=["conv_vae", "dense_ae"])
    parser.add_argument("--emulated_models", nargs="+", default=None,
                        help="the models trained under qemu (default: --models; conv_vae takes over 20 CPU minutes)")
    parser.add_argument("--images", type=int, default=HASH_IMAGES, help="training images of a hashed run")
    parser.add_argument("--batch_size", type=int, default=HASH_BATCH,
                        help="of a hashed run (default: 2 steps of 16 images)")
    parser.add_argument("--test_images", type=int, default=HASH_TEST_IMAGES,
                        help="evaluated at the end of a hashed run")
    parser.add_argument("--timing_model", default="conv_vae", help="the model timed, at batch 128")
    parser.add_argument("--timing_images", type=int, default=2560)
    parser.add_argument("--timing_epochs", type=int, default=4)
    parser.add_argument("--timing_repeats", type=int, default=3, help="processes per configuration (0: no timing)")
    parser.add_argument("--jobs", type=int, default=1, help="hashed runs side by side")
    parser.add_argument("--skip", nargs="*", default=[], help="CONFIG@ENVIRONMENT pairs not to run")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds an emulated child may take "
                                                                      "(a native one a tenth)")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/portable_bits.json)")
    parser.add_argument("--child", choices=["hash", "time"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--as_train_py", action="store_true", help=argparse.SUPPRESS)
    smoke.add_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = smoke.parse_args(parser, argv, {"models": ["dense_ae"], "envs": ["native-1", "native-2"],
                                           "timing_model": "dense_ae", "timing_images": 128, "timing_epochs": 2,
                                           "timing_repeats": 1})
    if args.child:
        child(args)
        return
    configs = configurations(args.configs, args.ablate, args.extra_parts)
    for name in args.envs:
        parse_environment(name)
    with tempfile.TemporaryDirectory(prefix="portable-bits-shim-") as folder:
        shim = build_shim(Path(folder))
        results = {"seed": SEED, "batch_size": args.batch_size, "latent_dim": LATENT_DIM, "images": args.images,
                   "test_images": args.test_images,
                   "models": args.models, "emulated_models": args.emulated_models or args.models,
                   "core_counts_faked": shim is not None,
                   "qemu": shutil.which(QEMU), "parts": PORTABLE_PARTS | EXTRA_PARTS}
        results |= hash_table(configs, args.envs, shim, args)
        results["timing"] = timing(shim, args) if args.timing_repeats else None
    results["provenance"] = provenance(__file__, argv)
    out = smoke.out_path(args, ROOT / "benchmarks/results/portable_bits.json", "portable_bits.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results)
    for config, row in results["configs"].items():
        print(f"{config:40s} all environments agree: {row['all_environments_agree']}  "
              f"distinct hashes: {row['distinct_hashes']}")
    if results["timing"]:
        print(f"portable / default epoch time ({args.timing_model}, batch {TIMING_BATCH}): "
              f"{results['timing']['ratio_portable_over_default']:.3f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
