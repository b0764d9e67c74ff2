"""Data parallelism over several devices, on 8 CPU devices forced by XLA_FLAGS (in subprocesses:
the flag must be set before JAX starts). The CPU platform is pinned (also for the one-device peer
runs), so that on a GPU machine the forced host devices are the ones used."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import ROOT, run_cli

CPU = {"JAX_PLATFORMS": "cpu"}
EIGHT_DEVICES = CPU | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
TWO_DEVICES = CPU | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
FLAGS = ["--model", "dense_ae", "--limit", "1024", "--batch_size", "64", "--epochs", "2",
         "--no-tensorboard", "--no-plot_latent"]


def train_in(workdir, env=None):
    result = run_cli(*FLAGS, "--workdir", str(workdir), env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_eight_devices_match_one_and_repeat_bitwise(tmp_path):
    single = train_in(tmp_path / "one", CPU)
    first = train_in(tmp_path / "eight_a", EIGHT_DEVICES)
    train_in(tmp_path / "eight_b", EIGHT_DEVICES)
    assert "cpu:7" in first.stdout and "cpu:1" not in single.stdout
    assert "each batch of 64 split over 8 devices" in first.stdout
    read = lambda name: (tmp_path / name / "params.msgpack").read_bytes()  # noqa: E731
    assert read("eight_a") == read("eight_b")
    metrics = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("one", "eight_a")}
    for one, eight in zip(metrics["one"], metrics["eight_a"], strict=True):
        for split in ("train", "test"):
            np.testing.assert_allclose(eight[split]["loss"], one[split]["loss"], rtol=1e-4)


def test_the_batch_is_split_and_gradients_all_reduced():
    code = """
import jax, jax.numpy as jnp, optax
from vaejax.data import load_bundled_mnist
from vaejax.models import build_model
from vaejax.devices import plan_devices
from vaejax.keys import seed_keys, epoch_keys
from vaejax.steps import init_state, zero_sums
from vaejax.training import Trainer
d = load_bundled_mnist(); model = build_model("dense_ae", 2); opt = optax.adam(1e-3); keys = seed_keys(0)
t = Trainer(model, opt, 64, d.limited(256), keys.eval, plan_devices("dense_ae", 64, loop="step"))
state = t.plan.place(init_state(model, opt, keys, t.steps))
_, shuffle, root = epoch_keys(state.rng)
order = jax.random.permutation(shuffle, 256)
hlo = t.train_step.lower(state, *t.train_data, order, root).compile().as_text()
sums = t.plan.place(zero_sums())
eval_hlo = t.eval_step.lower(state.params, sums, *t.test_data, jnp.int32(0), t.eval_key).compile().as_text()
print(len(jax.devices()), tuple(t.plan.batch_sharding.spec), "all-reduce" in hlo, "all-reduce" in eval_hlo)
print(eval_hlo.count("f32[125,784]") > 0, eval_hlo.count("f32[1000,784]"))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **EIGHT_DEVICES}, timeout=300)
    assert result.returncode == 0, result.stderr
    # Training and evaluation: each device computes its 1/8 of the batch (125 of 1000 test images).
    assert result.stdout.split() == ["8", "('data',)", "True", "True", "True", "0"]


def test_batch_must_divide_over_the_devices(tmp_path):
    result = run_cli("--model", "dense_ae", "--batch_size", "60", "--workdir", str(tmp_path / "run"),
                     env=EIGHT_DEVICES)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--batch_size 60 does not divide evenly over 8 devices" in result.stderr


def test_micro_batches_are_refused_over_several_devices(tmp_path):
    result = run_cli("--model", "dense_ae", "--micro_batches", "2", "--workdir", str(tmp_path / "run"),
                     env=EIGHT_DEVICES)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--micro_batches 2 needs a single device; the batch is already split over 8 devices" in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_two_processes_train_the_same_bits_as_one_process_with_two_devices(tmp_path):
    """jax.distributed on localhost: two CPU processes of one device each (Gloo collectives) form
    the same 2-device mesh as one process with two devices, and give the same bytes."""
    flags = [*FLAGS[:3], "256", *FLAGS[4:]]
    single = run_cli(*flags, "--workdir", str(tmp_path / "one"), env=TWO_DEVICES)
    assert single.returncode == 0, single.stderr
    launch = ["--distributed", "--coordinator_address", f"localhost:{free_port()}", "--num_processes", "2"]
    processes = [
        subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags, "--workdir", str(tmp_path / "multi"),
                          *launch, "--process_id", str(index)], cwd=ROOT, env={**os.environ, **CPU},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in (1, 0)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert "split over 2 devices in 2 processes" in outputs[1][0]
    assert "process 1 done; process 0 wrote" in outputs[0][0]
    read = lambda name: (tmp_path / name / "params.msgpack").read_bytes()  # noqa: E731
    assert read("multi") == read("one")


def test_distributed_without_peers_is_one_clear_error(tmp_path):
    result = run_cli(*FLAGS, "--workdir", str(tmp_path / "run"), "--distributed", env=CPU)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--distributed:" in result.stderr
