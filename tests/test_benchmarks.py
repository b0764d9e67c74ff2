"""Every benchmark still runs: each script's `--smoke` (the real code path at tiny sizes) exits 0 and
writes the JSON a real run writes, with its provenance record, and nothing into benchmarks/results/
or figures/; gpu_session.sh's dry run finds that every command it would call parses, and fails when
one does not."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
CHROMIUM = Path("/usr/bin/chromium")
# Each smoke run: the script and its extra flags -> the keys of the JSON a real run writes.
SMOKES = {
    ("augmentation.py",): {"setting", "results"},
    ("beta_table.py",): {"setting", "rows"},
    ("cpu_kernels.py",): {"cores", "choices", "timings", "bits", "best"},
    ("default_run.py",): {"same", "differences", "machine", "params_sha256"},
    ("determinism.py",): {"model", "epochs", "limit", "modes", "backend", "deterministic_cost", "modes_agree"},
    ("explore_latency.py",): {"what", "workdir", "model", "latent_dim", "pointer_moves", "pointer_events_measured",
                              "median_ms", "p95_ms", "target_ms", "chromium"},
    ("golden_bits.py",): {"sha256", "golden", "machine"},
    ("iwae_table.py",): {"backend", "device", "args", "rows"},
    ("iwae_table.py", "--cost"): {"backend", "device", "args", "rows"},
    ("layer_profile.py",): {"jax", "torch", "peer", "cores", "batch", "parts", "layers", "step_sum_xla_ms",
                            "step_sum_torch_ms"},
    ("loop_structure.py",): {"backend", "steps", "repeats", "rows"},
    ("main_job.py",): {"flags", "variants", "wall_ratio_every_output_over_bare", "host_work_share_of_epochs"},
    ("portable_bits.py",): {"models", "configs", "environments_run", "environments_skipped", "timing"},
    ("sampler_table.py",): {"setting", "runs"},
    ("seed003_dense_ae.py",): {"runs", "train_mean", "train_best", "test_mean", "test_best", "article"},
    ("train_speed.py",): {"backend", "device", "peer", "torch", "models"},
}
NOT_SMOKED = {  # the files of benchmarks/ that are not benchmark scripts, or are checked elsewhere
    "__init__.py": "the package",
    "provenance.py": "the record every script stores",
    "smoke.py": "the --smoke rule every script follows",
    "parse_only.py": "gpu_session.sh's dry run, tested below",
    "step_timing.py": "the step timer train_speed.py and cpu_kernels.py share",
    "mutants.py": "runs the test suite per mutant (minutes); tests/test_mutants.py checks its set",
    "readme_numbers.py": "README's number checker and rewriter; tests/test_readme_numbers.py runs it",
}
PROVENANCE = {"command", "date", "commit", "machine", "versions", "xla_flags"}
# The scripts that measure vaejax in their own process, so must put train.py's kernel settings in place first; the
# others run train.py, vaejax's commands or children with their own settings (cpu_kernels, portable_bits).
IN_PROCESS = {"augmentation.py", "beta_table.py", "default_run.py", "layer_profile.py", "loop_structure.py",
              "sampler_table.py", "seed003_dense_ae.py", "train_speed.py"}
# what the suite's own process put in place (conftest): a smoke run starts without it, as a user's shell would
SUITE_SETTINGS = ("XLA_FLAGS", "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL")


def measured_files() -> dict[Path, tuple[int, int]]:
    """Every file under benchmarks/results/ and figures/, with its size and modification time."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns)
            for folder in (BENCHMARKS / "results", ROOT / "figures") for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("command", list(SMOKES), ids=" ".join)
def test_smoke_run_writes_its_results_with_provenance(command, tmp_path):
    if command[0] == "explore_latency.py":
        if not CHROMIUM.exists():
            pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
        pytest.importorskip("playwright.sync_api", reason="no playwright package (pip install playwright)")
    out = tmp_path / "results.json"
    before = measured_files()
    env = {name: value for name, value in os.environ.items() if name not in SUITE_SETTINGS}
    result = subprocess.run([sys.executable, str(BENCHMARKS / command[0]), *command[1:], "--smoke", "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert SMOKES[command] <= set(record), f"missing {SMOKES[command] - set(record)}"
    assert PROVENANCE <= set(record["provenance"])
    assert record["provenance"]["command"].startswith(f"python benchmarks/{command[0]}")
    assert record["provenance"]["machine"]["cpu"]["cores"] >= 1
    if command[0] in IN_PROCESS:  # the numbers are those of train.py's settings: portable bits on a CPU
        from vaejax.devices import DETERMINISTIC_XLA_FLAG, PORTABLE_CPU_XLA_FLAGS, cpu_lacks_fma

        wanted = {DETERMINISTIC_XLA_FLAG} | (set() if cpu_lacks_fma() else set(PORTABLE_CPU_XLA_FLAGS))
        assert wanted <= set(record["provenance"]["xla_flags"].split()), record["provenance"]["xla_flags"]
    assert measured_files() == before, "a smoke run wrote into benchmarks/results/ or figures/"


def test_every_benchmark_script_has_a_smoke_run_named_in_its_usage():
    scripts = {path.name for path in BENCHMARKS.glob("*.py")} - set(NOT_SMOKED)
    assert scripts == {command[0] for command in SMOKES}, "give a new benchmark a --smoke run and list it in SMOKES"
    assert IN_PROCESS <= scripts
    for name in scripts:
        assert "--smoke" in ast.get_docstring(ast.parse((BENCHMARKS / name).read_text())), name


def dry_run(script: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "OUT"}
    return subprocess.run(["bash", str(script), "--dry-run"], cwd=ROOT, env=env | {"PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=300)


def test_gpu_session_dry_run_finds_every_command_parses():
    result = dry_run(BENCHMARKS / "gpu_session.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run: every command parses" in result.stdout
    for checked in ["train.py: conv_vae", "benchmarks/determinism.py: parses", "benchmarks/train_speed.py: parses",
                    "benchmarks/main_job.py: parses", "benchmarks/iwae_table.py: parses", "nvidia-smi: skipped",
                    "pytest: skipped"]:
        assert checked in result.stdout


def test_gpu_session_dry_run_fails_on_a_flag_that_does_not_parse(tmp_path):
    text = (BENCHMARKS / "gpu_session.sh").read_text()
    broken = {"train_speed.py --repeats 3": "train_speed.py --repeats_per_peer 3",  # no such flag
              "train.py --latent_dim 2": "train.py --latent_dim 0"}  # parses, but Config refuses it
    for good, bad in broken.items():
        assert good in text
        text = text.replace(good, bad)
    (tmp_path / "gpu_session.sh").write_text(text)
    result = dry_run(tmp_path / "gpu_session.sh")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "would not parse" in result.stdout
    assert "--repeats_per_peer 3" in result.stdout and "--latent_dim" in result.stdout
