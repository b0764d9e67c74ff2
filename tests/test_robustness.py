"""No run is lost: kill -9 at random moments, SIGINT/SIGTERM, non-finite losses, bad work directories."""

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, run_cli

from vaejax import checkpoint
from vaejax.config import Config
from vaejax.errors import VaejaxError
from vaejax.training import train


def start_training(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_epoch_lines(process: subprocess.Popen, count: int) -> None:
    seen = 0
    for line in process.stdout:
        seen += line.startswith("epoch")
        if seen >= count:
            return
    raise AssertionError(f"training ended before {count} epoch lines: {process.wait()} {process.stderr.read()}")


def reference_params(tmp_path, mnist, **flags) -> bytes:
    """params.msgpack of the same run done in one go, in this process."""
    config = Config(workdir=str(tmp_path / "reference"), **flags).resolved()
    train(config, mnist, log=lambda line: None)
    return (tmp_path / "reference" / checkpoint.PARAMS_FILE).read_bytes()


def cli_flags(flags: dict) -> list[str]:
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def test_kill_9_at_random_moments_then_resume_ends_byte_identical(tmp_path, mnist):
    flags = {"model": "dense_ae", "limit": 2048, "epochs": 15}
    workdir = tmp_path / "killed"
    args = [*cli_flags(flags), "--workdir", str(workdir), "--resume", "--no-plot_latent"]
    chooser = random.Random(2026)
    kills = 0
    for _ in range(3):
        process = start_training(*args)
        wait_for_epoch_lines(process, chooser.randint(1, 3))
        time.sleep(chooser.uniform(0.0, 0.2))  # land anywhere: mid-epoch, mid-checkpoint-write
        process.kill()
        process.wait()
        kills += process.returncode == -signal.SIGKILL
        checkpoint.decode_checkpoint(workdir / checkpoint.CHECKPOINT_FILE)  # always loadable
    assert kills >= 2  # (a run may finish first only if the machine is very fast)
    finished = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "resumed from" in finished.stdout
    assert (workdir / checkpoint.PARAMS_FILE).read_bytes() == reference_params(tmp_path, mnist, **flags)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_a_checkpoint_mid_epoch_and_resume_is_bitwise(tmp_path, mnist, signum):
    flags = {"model": "dense_ae", "limit": 8192, "epochs": 3, "loop": "step"}
    workdir = tmp_path / "interrupted"
    args = [*cli_flags(flags), "--workdir", str(workdir), "--no-plot_latent"]
    process = start_training(*args)
    wait_for_epoch_lines(process, 1)
    time.sleep(0.05)
    process.send_signal(signum)
    stderr = process.stderr.read()
    assert process.wait() == 128 + signum
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "interrupted" in stderr and "checkpoint written, continue with --resume" in stderr
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (workdir / checkpoint.PARAMS_FILE).read_bytes() == reference_params(tmp_path, mnist, **flags)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_mnist):
    config = Config(model="dense_ae", epochs=1, batch_size=64, workdir=str(tmp_path)).resolved()
    train(config, small_mnist, log=lambda line: None)
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    state, history = checkpoint.restore_state(tmp_path, config, _template(config), log=lambda line: None)
    exploded = state.replace(params=jax.tree_util.tree_map(lambda leaf: leaf * 1e30, state.params))
    checkpoint.save_state(tmp_path, config, exploded, history)  # finite, but the next loss is not
    before = path.read_bytes()
    resumed = dataclasses.replace(config, epochs=2, resume=True)
    with pytest.raises(VaejaxError, match=r"loss became non-finite in epoch 2 at step 1 of 8; stopped, "
                                          r"the last good checkpoint \(epoch 1\) is kept"):
        train(resumed, small_mnist, log=lambda line: None)
    assert path.read_bytes() == before


def _template(config):
    import optax

    from vaejax.keys import seed_keys
    from vaejax.models import build_model
    from vaejax.steps import init_state

    steps_per_epoch = 512 // config.batch_size
    return init_state(build_model(config.model, config.latent_dim), optax.adam(config.learning_rate),
                      seed_keys(config.seed), steps_per_epoch)


@pytest.mark.parametrize(("workdir", "message"), [
    ("/proc/1", "--workdir /proc/1 is not writable"),
    ("/proc/1/vaejax-run", "cannot create work directory /proc/1/vaejax-run"),
])
def test_unwritable_work_directory(tmp_path, workdir, message):
    result = run_cli("--model", "dense_ae", "--workdir", workdir, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_work_directory_of_another_configuration_is_refused(tmp_path):
    workdir = tmp_path / "run"
    (workdir).mkdir()
    (workdir / checkpoint.CONFIG_FILE).write_text(Config(model="dense_ae", latent_dim=3).resolved().to_json())
    result = run_cli("--model", "dense_ae", "--workdir", str(workdir), "--resume", cwd=tmp_path)
    assert result.returncode == 2
    assert "holds a run with different latent_dim" in result.stderr and result.stderr.count("\n") == 1
    result = run_cli("--model", "dense_ae", "--workdir", str(workdir), cwd=tmp_path)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert np.array_equal(sorted(os.listdir(workdir)), [checkpoint.CONFIG_FILE])
    assert Path(workdir / checkpoint.CONFIG_FILE).read_text().count('"latent_dim": 3') == 1


def test_corrupt_checkpoint_ends_in_one_line_through_the_cli(tmp_path, small_mnist):
    workdir = tmp_path / "run"
    config = Config(model="dense_ae", epochs=1, workdir=str(workdir), limit=512).resolved()
    train(config, small_mnist, log=lambda line: None)
    path = workdir / checkpoint.CHECKPOINT_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = run_cli("--model", "dense_ae", "--limit", "512", "--epochs", "2", "--workdir", str(workdir),
                     "--resume", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{path}: corrupt or truncated file" in result.stderr
    assert path.read_bytes() == data[: len(data) // 2]  # left for the user to inspect
