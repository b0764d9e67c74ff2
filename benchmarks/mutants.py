"""Mutation check: put one plausible bug at a time into the core (losses, models, the train and eval
steps, the loop) and run the fast tests as CI runs them; a mutant the tests do not fail survives.

    python benchmarks/mutants.py [--only NAME ...] [--out FILE]

Each mutant is a one-place text change, applied to a copy of the repository (the working tree is
never touched) and run with `pytest -x` over FAST_TESTS, without PyTorch-only tests. Printed: each
mutant, killed or survived, the first failing test, the seconds it took; then the score. The list
is the kind of bug a reviewer would plant: keys not folded or not advanced, a wrong std transform,
a loss term with the wrong sign, padding counted as data, a missing layer or activation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST_TESTS = ["tests/test_losses.py", "tests/test_models.py", "tests/test_seed_fidelity.py", "tests/test_training.py",
              "tests/test_randomness.py"]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str


MUTANTS = [
    Mutant("step noise reused (step key not folded with the step)", "vaejax/steps.py",
           "key = jax.random.fold_in(step_root, step)", "key = step_root"),
    Mutant("epoch key never advances", "vaejax/training.py",
           "lambda rng: epoch_keys(rng)[0]", "lambda rng: rng"),
    Mutant("no shuffle", "vaejax/steps.py",
           "return jax.random.permutation(shuffle_key, count), step_root", "return jnp.arange(count), step_root"),
    Mutant("padded rows weighted as real", "vaejax/steps.py",
           "weights = (positions < count).astype(jnp.float32)", "weights = jnp.ones(batch_size, jnp.float32)"),
    Mutant("micro-batches share one key", "vaejax/steps.py",
           "jax.random.fold_in(key, index), binarize)", "key, binarize)"),
    Mutant("micro-batch parts weighted equally", "vaejax/steps.py",
           "share = part_weights.sum() / count", "share = 1.0 / micro_batches"),
    Mutant("evaluation batches share one key", "vaejax/steps.py",
           "key = jax.random.fold_in(eval_key, batch)", "key = eval_key"),
    Mutant("epoch sums count padded rows", "vaejax/steps.py",
           '"count": sums["count"] + count,', '"count": sums["count"] + weights.shape[0],'),
    Mutant("binarization draws from the noise key", "vaejax/steps.py",
           "binarize_key, key = jax.random.split(key)", "binarize_key = key"),
    Mutant("std through exp, not softplus", "vaejax/models.py",
           'std = nn.softplus(dense(self.latent_dim, name="std")(x))',
           'std = jnp.exp(dense(self.latent_dim, name="std")(x))'),
    Mutant("z ignores the std", "vaejax/models.py",
           "return mean + std * jax.random.normal(key, mean.shape, mean.dtype)",
           "return mean + jax.random.normal(key, mean.shape, mean.dtype)"),
    Mutant("seed 000's second Dense(784) dropped", "vaejax/models.py",
           "        x = dense(IMAGE_PIXELS)(x)  # the seed stacks two linear layers here; kept for fidelity\n", ""),
    Mutant("seed 003's code without ReLU", "vaejax/models.py",
           "return nn.relu(dense(self.latent_dim)(x)), None", "return dense(self.latent_dim)(x), None"),
    Mutant("encoder convolutions VALID, not SAME", "vaejax/models.py",
           'strides=(stride, stride), padding="SAME"', 'strides=(stride, stride), padding="VALID"'),
    Mutant("KL without the log-variance term", "vaejax/losses.py",
           "std**2 - 2.0 * jnp.log(std) - 1.0", "std**2 - 1.0"),
    Mutant("BCE with the target's sign flipped", "vaejax/losses.py",
           "jax.nn.softplus(logits) - targets * logits", "jax.nn.softplus(logits) + targets * logits"),
    Mutant("mean over the padded batch", "vaejax/losses.py",
           "count = jnp.maximum(weights.sum(), 1.0)", "count = jnp.float32(weights.shape[0])"),
    Mutant("plain SGD instead of Adam", "vaejax/training.py",
           "optimizer = optax.adam(config.learning_rate)", "optimizer = optax.sgd(config.learning_rate)"),
]


def copy_repository(target: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(folder)}  # the copy's vaejax, not the installed one
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *FAST_TESTS],
                          cwd=folder, env=env, capture_output=True, text=True)


def first_failure(output: str) -> str:
    match = re.search(r"^FAILED (\S+)", output, re.MULTILINE) or re.search(r"^ERROR (\S+)", output, re.MULTILINE)
    return match.group(1) if match else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="run the mutants whose name contains one of these")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mutants.json"))
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or any(part in m.name for part in args.only)]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        clean = Path(scratch) / "clean"
        copy_repository(clean)
        started = time.perf_counter()
        baseline = run_tests(clean)
        if baseline.returncode != 0:
            sys.exit(f"mutants.py: the fast tests fail without a mutant: {first_failure(baseline.stdout)}")
        print(f"baseline: the fast tests pass in {time.perf_counter() - started:.0f} s ({', '.join(FAST_TESTS)})")
        for mutant in chosen:
            folder = Path(scratch) / "mutant"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(clean, folder)
            path = folder / mutant.path
            text = path.read_text()
            if text.count(mutant.old) != 1:
                sys.exit(f"mutants.py: {mutant.name!r}: the text to change occurs {text.count(mutant.old)} times "
                         f"in {mutant.path}")
            path.write_text(text.replace(mutant.old, mutant.new))
            started = time.perf_counter()
            result = run_tests(folder)
            seconds = time.perf_counter() - started
            killed = result.returncode != 0
            results.append({"mutant": mutant.name, "file": mutant.path, "killed": killed, "seconds": round(seconds, 1),
                            "killed_by": first_failure(result.stdout) if killed else None})
            print(f"{'killed  ' if killed else 'SURVIVED'} {mutant.name:55s} {seconds:6.0f} s  "
                  f"{results[-1]['killed_by'] or ''}", flush=True)
    killed = sum(result["killed"] for result in results)
    print(f"score: {killed}/{len(results)} mutants killed")
    if args.only is None:
        Path(args.out).write_text(json.dumps({"fast_tests": FAST_TESTS, "mutants": results,
                                              "killed": killed, "total": len(results)}, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
