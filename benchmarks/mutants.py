"""Mutation check: put one plausible bug at a time into vaejax and run, as CI runs them, the tests
that should catch it; a mutant no test fails survives.

    python benchmarks/mutants.py [--only NAME ...] [--out FILE]     # run the mutants (minutes)
    python benchmarks/mutants.py --check                            # only check that each still applies

Each mutant is a one-place text change with its anchor: the text it replaces must occur exactly once
in its file (a mutant whose text moved or doubled is *stale*: reported, never run, and
tests/test_mutants.py fails on it in a second). A mutant is applied to a copy of the repository (the
working tree is never touched); its killers (the tests named with it) run first with `pytest -x`,
then, if they all pass, the whole fast list (every killer file) runs, so a mutant survives only if
no fast test notices it. Printed: each mutant, killed or survived, the failing test, the seconds;
then the score. The results JSON records each mutant's fingerprint (its file and texts), so a
mutant edited after the run no longer matches the recorded score.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
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
RESULTS = ROOT / "benchmarks" / "results" / "mutants.json"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    killers: tuple[str, ...]  # pytest node ids expected to fail on this mutant

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\0".join((self.path, self.old, self.new)).encode()).hexdigest()[:16]


STEPS, TRAINING, MODELS, LOSSES = "vaejax/steps.py", "vaejax/training.py", "vaejax/models.py", "vaejax/losses.py"
KEYS, BATCHING, OPTIMIZERS = "vaejax/keys.py", "vaejax/batching.py", "vaejax/optimizers.py"
SAMPLERS, DEVICES, EXPLORE = "vaejax/samplers.py", "vaejax/devices.py", "vaejax/explore.py"
CHECKPOINT, FILES = "vaejax/checkpoint.py", "vaejax/files.py"
RANDOMNESS = "tests/test_randomness.py::test_every_step_draws_new_noise_and_every_epoch_a_new_order_over_every_image"
FIDELITY_ADAM = "tests/test_seed_fidelity.py::test_train_step_is_optax_form_adam"

MUTANTS = [
    # keys and order
    Mutant("step noise reused (step key not folded with the step)", KEYS,
           "return jax.random.fold_in(step_root, step)", "return step_root", (FIDELITY_ADAM,)),
    Mutant("epoch key never advances", TRAINING,
           "state.replace(rng=next_rng,", "state.replace(rng=state.rng,", (RANDOMNESS,)),
    Mutant("no shuffle", TRAINING,
           "return next_rng, jax.random.permutation(shuffle_key, count), step_root",
           "return next_rng, jax.numpy.arange(count), step_root",
           (RANDOMNESS,)),
    Mutant("micro-batches share one key", STEPS,
           "loss_fn(params, part, part_key(key, index))", "loss_fn(params, part, key)",
           ("tests/test_training.py::test_micro_batches_of_a_vae_draw_each_part_from_its_own_key",)),
    Mutant("evaluation batches share one key", KEYS,
           "return jax.random.fold_in(eval_key, batch)", "return eval_key",
           ("tests/test_randomness.py::test_each_test_batch_draws_its_own_evaluation_noise",)),
    Mutant("binarization draws from the noise key", KEYS,
           "binarize_key, noise_key = jax.random.split(key)", "binarize_key = noise_key = key",
           ("tests/test_training.py::test_dynamic_binarization_draws_a_fresh_binary_batch_from_the_step_key",)),
    Mutant("a seed's high 32 bits dropped (2^32 trains seed 0)", KEYS,
           "return jax.random.fold_in(key, high) if high else key", "return key",
           ("tests/test_flag_ranges.py::test_seeds_past_32_bits_give_their_own_keys_and_small_seeds_keep_jax_s",)),
    # padding and weights
    Mutant("padded rows weighted as real", BATCHING,
           "weights = (positions < count).astype(jnp.float32)", "weights = jnp.ones(batch_size, jnp.float32)",
           ("tests/test_training.py::test_batches_cover_every_image_once",)),
    Mutant("micro-batch parts weighted equally", STEPS,
           "share = part.weights.sum() / count", "share = 1.0 / parts",
           ("tests/test_training.py::test_micro_batches_sum_to_the_whole_batch_gradient",)),
    Mutant("epoch sums count padded rows", STEPS,
           '"count": sums["count"] + count,', '"count": sums["count"] + weights.shape[0],',
           ("tests/test_training.py::test_epoch_means_weigh_every_real_image_once",)),
    Mutant("mean over the padded batch", LOSSES,
           "return jnp.sum(per_image * weights) / jnp.maximum(weights.sum(), 1.0)",
           "return jnp.sum(per_image * weights) / weights.shape[0]",
           ("tests/test_losses.py::test_padding_weights_leave_the_real_images_mean",)),
    # the seed architectures
    Mutant("std through exp, not softplus", MODELS,
           'std = nn.softplus(dense(self.latent_dim, name="std")(x))  # softplus keeps std > 0',
           'std = jnp.exp(dense(self.latent_dim, name="std")(x))',
           ("tests/test_seed_fidelity.py",)),
    Mutant("z ignores the std", MODELS,
           "return mean + std * jax.random.normal(key, mean.shape, mean.dtype)",
           "return mean + jax.random.normal(key, mean.shape, mean.dtype)", ("tests/test_seed_fidelity.py",)),
    Mutant("seed 000's second Dense(784) dropped", MODELS,
           "        x = dense(IMAGE_PIXELS)(x)  # the seed stacks two linear layers here; kept for fidelity\n", "",
           ("tests/test_models.py",)),
    Mutant("seed 003's code without ReLU", MODELS,
           "return nn.relu(dense(self.latent_dim)(x)), None", "return dense(self.latent_dim)(x), None",
           ("tests/test_seed_fidelity.py",)),
    Mutant("encoder convolutions VALID, not SAME", MODELS,
           'strides=(stride, stride), padding="SAME"', 'strides=(stride, stride), padding="VALID"',
           ("tests/test_models.py",)),
    # losses and the optimizer
    Mutant("KL without the log-variance term", LOSSES,
           "std**2 - 2.0 * jnp.log(std) - 1.0", "std**2 - 1.0", ("tests/test_losses.py",)),
    Mutant("BCE with the target's sign flipped", LOSSES,
           "jax.nn.softplus(logits) - targets * logits", "jax.nn.softplus(logits) + targets * logits",
           ("tests/test_losses.py",)),
    Mutant("plain SGD instead of Adam", OPTIMIZERS,
           "return optax.adam(learning_rate)", "return optax.sgd(learning_rate)",
           ("tests/test_iwae.py::test_the_constant_schedule_is_the_seeds_adam",)),
    Mutant("IWAE bound without its log K", LOSSES,
           "return jax.nn.logsumexp(log_weights, axis=-1) - jnp.log(log_weights.shape[-1])",
           "return jax.nn.logsumexp(log_weights, axis=-1)",
           ("tests/test_losses.py::test_the_iwae_bound_is_the_log_mean_of_the_weights",)),
    Mutant("IWAE's K-draw log weights ignore the prior", LOSSES,
           "return log_likelihood + prior - gaussian_log_density(z, mean, std), log_likelihood",
           "return log_likelihood - gaussian_log_density(z, mean, std), log_likelihood",
           ("tests/test_iwae.py::test_iwae_at_one_draw_is_the_one_draw_elbo_and_matches_the_analytic_elbo_on_average",)),
    Mutant("DReG's encoder weighted by w~, not w~^2", LOSSES,
           "scaled_z = frozen_z + normalized[..., None] * (z - frozen_z)", "scaled_z = z",
           ("tests/test_iwae.py::test_dreg_gradient_is_the_iwae_gradient_in_expectation",)),
    # the fitted samplers
    Mutant("mixture draws ignore the component weights", SAMPLERS,
           "jax.random.categorical(component_key, jnp.log(weights), shape=(count,))",
           "jax.random.categorical(component_key, jnp.zeros_like(weights), shape=(count,))",
           ("tests/test_samplers.py::test_mixture_draws_follow_the_mixture_and_repeat_from_the_key",)),
    Mutant("mixture draws ignore the covariances", SAMPLERS,
           'np.einsum("nij,nj->ni", factors[components], noise)', "noise",
           ("tests/test_samplers.py::test_mixture_draws_follow_the_mixture_and_repeat_from_the_key",)),
    Mutant("M-step keeps the components' weights equal", SAMPLERS,
           "return GaussianMixture(totals / totals.sum(), means, covariances)",
           "return GaussianMixture(np.full(len(totals), 1 / len(totals)), means, covariances)",
           ("tests/test_samplers.py::test_fit_recovers_a_known_mixture",)),
    # the work directory
    Mutant("a damaged checkpoint does not fall back to the previous copy", CHECKPOINT,
           "path, payload = previous, decode_checkpoint(previous, max_bytes)", "raise",
           ("tests/test_checkpoint.py::test_previous_checkpoint_is_kept_and_used_when_the_latest_is_damaged",)),
    Mutant("the work-directory lock is never taken", FILES,
           "                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n", "                pass\n",
           ("tests/test_workdir.py::test_the_lock_excludes_a_second_holder_in_the_same_process_and_is_taken_again_once_released",)),
    # the explorer's answers and who may ask
    Mutant("explorer decodes answer the padding rows", EXPLORE,
           'to_uint8(finite(probabilities[:count], "the decoder\'s output"))',
           'to_uint8(finite(probabilities[-count:], "the decoder\'s output"))',
           ("tests/test_explore.py::test_decode_and_encode_answer_as_the_model_functions",)),
    Mutant("explorer encodes the drawing transposed", EXPLORE,
           "image = grey.astype(np.uint8).reshape(1, IMAGE_SIDE, IMAGE_SIDE)",
           "image = grey.astype(np.uint8).reshape(1, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1)",
           ("tests/test_explore.py::test_decode_and_encode_answer_as_the_model_functions",)),
    Mutant("explorer answers any Host (DNS rebinding)", EXPLORE,
           "        if not self.serves(hosts[0]):\n", "        if False:\n",
           ("tests/test_explore_hostile.py::test_only_this_servers_host_and_port_are_answered",)),
    Mutant("explorer beyond loopback needs no token", EXPLORE,
           "        if self.token is None:\n            return None\n", "        return None\n",
           ("tests/test_explore_hostile.py::test_beyond_loopback_every_request_needs_the_token",)),
    # the device plan
    Mutant("the deterministic-kernel flag says false", DEVICES,
           'DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"',
           'DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=false"',
           ("tests/test_cli.py::test_deterministic_and_portable_kernels_are_asked_for_by_default_and_can_be_declined",)),
]


def fast_tests() -> list[str]:
    """Every file that holds a killer: what a surviving mutant must also get past."""
    return sorted({killer.split("::")[0] for mutant in MUTANTS for killer in mutant.killers})


def stale_reasons(mutant: Mutant, root: Path = ROOT) -> list[str]:
    """Why `mutant` no longer applies to the tree at `root` (empty when it does)."""
    path = root / mutant.path
    if not path.is_file():
        return [f"{mutant.path} does not exist"]
    text = path.read_text()
    reasons = []
    if text.count(mutant.old) != 1:
        reasons.append(f"its text occurs {text.count(mutant.old)} times in {mutant.path}, not once")
    elif mutant.new == mutant.old:
        reasons.append("it changes nothing")
    else:
        try:
            ast.parse(text.replace(mutant.old, mutant.new))
        except SyntaxError as error:
            reasons.append(f"it leaves {mutant.path} unparsable ({error.msg}, line {error.lineno})")
    for killer in mutant.killers:
        if not (root / killer.split("::")[0]).is_file():
            reasons.append(f"its killer {killer} is not a test file")
        elif "::" in killer and f"def {killer.split('::')[1].split('[')[0]}(" not in (
                root / killer.split("::")[0]).read_text():
            reasons.append(f"its killer {killer} is not a test")
    return reasons


def stale_mutants(root: Path = ROOT) -> dict[str, list[str]]:
    return {mutant.name: reasons for mutant in MUTANTS if (reasons := stale_reasons(mutant, root))}


def copy_repository(target: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(folder: Path, tests: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(folder)}  # the copy's vaejax, not the installed one
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=folder, env=env, capture_output=True, text=True)


def first_failure(output: str) -> str:
    match = re.search(r"^FAILED (\S+)", output, re.MULTILINE) or re.search(r"^ERROR (\S+)", output, re.MULTILINE)
    return match.group(1) if match else "?"


def run_mutant(clean: Path, scratch: Path, mutant: Mutant) -> dict:
    folder = scratch / "mutant"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(clean, folder)
    path = folder / mutant.path
    path.write_text(path.read_text().replace(mutant.old, mutant.new))
    started = time.perf_counter()
    result = run_tests(folder, list(mutant.killers))
    by_own_killer = result.returncode != 0
    if not by_own_killer:
        result = run_tests(folder, fast_tests())
    killed = result.returncode != 0
    return {"mutant": mutant.name, "file": mutant.path, "fingerprint": mutant.fingerprint, "killed": killed,
            "killed_by": first_failure(result.stdout) if killed else None,
            "by_its_listed_killer": by_own_killer, "seconds": round(time.perf_counter() - started, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="run the mutants whose name contains one of these")
    parser.add_argument("--check", action="store_true", help="only report stale mutants (exit 1 if any)")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s; not with --only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stale = stale_mutants()
    for name, reasons in stale.items():
        print(f"STALE    {name}: {'; '.join(reasons)}")
    if args.check or stale:
        print(f"{len(MUTANTS) - len(stale)} of {len(MUTANTS)} mutants apply")
        return 1 if stale else 0
    chosen = [m for m in MUTANTS if args.only is None or any(part in m.name for part in args.only)]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        clean = Path(scratch) / "clean"
        copy_repository(clean)
        killers = sorted({killer for mutant in chosen for killer in mutant.killers})
        started = time.perf_counter()
        baseline = run_tests(clean, killers)
        if baseline.returncode != 0:
            sys.exit(f"mutants.py: the killers fail without a mutant: {first_failure(baseline.stdout)}")
        print(f"baseline: the {len(killers)} killers pass in {time.perf_counter() - started:.0f} s")
        for mutant in chosen:
            results.append(run_mutant(clean, Path(scratch), mutant))
            outcome = results[-1]
            print(f"{'killed  ' if outcome['killed'] else 'SURVIVED'} {mutant.name:55s} {outcome['seconds']:6.0f} s  "
                  f"{outcome['killed_by'] or ''}", flush=True)
    killed = sum(result["killed"] for result in results)
    print(f"score: {killed}/{len(results)} mutants killed")
    if args.only is None:
        sys.path.insert(0, str(ROOT))
        from benchmarks.provenance import provenance, write_result

        record = {"provenance": provenance(__file__, argv), "fast_tests": fast_tests(), "mutants": results,
                  "killed": killed, "total": len(results)}
        write_result(Path(args.out), record)
        print(f"written to {args.out}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
