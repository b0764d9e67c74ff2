"""Checks that only a GPU can make: its default kernels include nondeterministic reductions, so
these show that vaejax's defaults keep the same seed's bits there (skipped without a GPU)."""

import hashlib
import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.gpu
FLAGS = ["--latent_dim", "2", "--epochs", "2", "--limit", "4096", "--seed", "3"]


def params_digest(workdir) -> str:
    return hashlib.sha256((workdir / "params.msgpack").read_bytes()).hexdigest()


def test_default_flags_give_the_same_bits_on_a_gpu(tmp_path):
    for name in ("a", "b"):  # XLA_FLAGS emptied: train.py itself must ask for deterministic kernels
        result = run_cli(*FLAGS, "--workdir", str(tmp_path / name), env={"XLA_FLAGS": ""})
        assert result.returncode == 0, result.stderr
    assert params_digest(tmp_path / "a") == params_digest(tmp_path / "b")
    environment = json.loads((tmp_path / "a" / "config.json").read_text())["environment"]
    assert environment["backend"] == "gpu" and environment["deterministic_kernels"]
    assert "--xla_gpu_deterministic_ops=true" in environment["xla_flags"].split()  # the flag itself, not a claim
    assert environment["loop"] == "scan" and environment["micro_batches"] == 1


def test_nondeterministic_opt_out_is_recorded_and_warned(tmp_path):
    result = run_cli(*FLAGS, "--epochs", "1", "--nondeterministic", "--no-plot_latent", "--no-tensorboard",
                     "--workdir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "nondeterministic GPU kernels" in result.stdout
    environment = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert not environment["deterministic_kernels"]
    assert "--xla_gpu_deterministic_ops=true" not in environment["xla_flags"]
