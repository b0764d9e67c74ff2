"""The work directory: one process owns it, every file is written atomically (a symlink there is
replaced, never written through), and a file that cannot be written ends the run in one line with the
checkpoint and params.msgpack in agreement."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, run_cli
from flax import serialization

from vaejax import checkpoint, files, plot
from vaejax.config import Config
from vaejax.errors import VaejaxError
from vaejax.reporting import Reporter
from vaejax.training import train

TINY = ["--model", "dense_ae", "--limit", "96", "--batch_size", "32", "--no-tensorboard", "--no-plot_latent"]


def tiny_config(workdir: Path, **changes) -> Config:
    options = {"model": "dense_ae", "limit": 96, "batch_size": 32, "epochs": 1, "tensorboard": False,
               "plot_latent": False, "workdir": str(workdir)}
    return Config(**(options | changes)).resolved()


def train_with_figures(config: Config, dataset) -> None:
    """What train.py does in-process: training with the figures and the summary."""
    reporter = Reporter(config, log=lambda line: None)
    try:
        train(config, dataset, log=lambda line: None, observer=reporter)
    finally:
        reporter.close()


def assert_params_agree_with_the_checkpoint(workdir: Path) -> None:
    params = serialization.msgpack_restore((workdir / checkpoint.PARAMS_FILE).read_bytes())
    saved = checkpoint.decode_checkpoint(workdir / checkpoint.CHECKPOINT_FILE)["state"]["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(saved)
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(saved), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_second_process_is_refused_while_a_run_holds_the_work_directory_and_kill_9_frees_it(tmp_path):
    workdir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "--limit", "2048", "--epochs", "500",
                              "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:  # the lock is held from before config.json is written
            if line.startswith("epoch"):
                break
        else:
            raise AssertionError(f"training ended early: {first.wait()} {first.stderr.read()}")
        second = run_cli(*TINY, "--epochs", "2", "--workdir", str(workdir), "--resume", cwd=tmp_path)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"{workdir} is in use by another vaejax process (pid {first.pid})" in second.stderr
        with pytest.raises(VaejaxError, match=f"in use by another vaejax process \\(pid {first.pid}\\)"):
            plot.redraw(workdir)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with files.WorkdirLock(workdir):  # the kernel released it with the process: at once, no stale lock
        assert (workdir / files.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (workdir / files.LOCK_FILE).exists()


def test_the_lock_excludes_a_second_holder_in_the_same_process_and_is_taken_again_once_released(tmp_path):
    with files.WorkdirLock(tmp_path):
        with pytest.raises(VaejaxError, match=f"pid {os.getpid()}"):
            files.WorkdirLock(tmp_path).__enter__()
    held = files.WorkdirLock(tmp_path).__enter__()  # released and removed: taken again, as a new file
    try:
        with pytest.raises(VaejaxError, match="in use"):
            files.WorkdirLock(tmp_path).__enter__()
    finally:
        held.__exit__(None, None, None)


def test_symlinked_outputs_are_replaced_never_written_through(tmp_path, small_mnist):
    outside = tmp_path / "outside"
    outside.mkdir()
    workdir = tmp_path / "run"
    (workdir / "figures").mkdir(parents=True)
    links = {workdir / "model_summary.txt": outside / "summary.txt",
             workdir / "figures" / "reconstructions.png": outside / "reconstructions.png"}
    for link, target in [*links.items(), (None, outside / "curves.png")]:
        target.write_text("not vaejax's to write")
        if link is not None:
            link.symlink_to(target)
    train_with_figures(tiny_config(workdir), small_mnist)
    curves = workdir / "figures" / "learning_curves.png"
    curves.unlink()
    curves.symlink_to(outside / "curves.png")  # then `python -m vaejax.plot` redraws over a link
    assert plot.main(["--workdir", str(workdir)]) == 0
    for target in outside.iterdir():
        assert target.read_text() == "not vaejax's to write"
    for path in (workdir / "model_summary.txt", workdir / "figures" / "reconstructions.png", curves):
        assert not path.is_symlink() and path.stat().st_size > 0
    assert (workdir / "model_summary.txt").read_text().startswith('Model: "dense_ae"')
    assert not (workdir / files.LOCK_FILE).exists()  # a run that ended leaves no lock file


@pytest.mark.parametrize("obstacle", ["folder in the way", "read-only folder"])
def test_an_unwritable_output_is_one_line_with_checkpoint_and_params_in_agreement(tmp_path, small_mnist, obstacle):
    if obstacle == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    workdir = tmp_path / "run"
    train_with_figures(tiny_config(workdir), small_mnist)  # a finished run of one epoch
    figures = workdir / "figures"
    if obstacle == "folder in the way":
        (figures / "reconstructions_e002.png").mkdir()
    else:
        figures.chmod(0o555)
    try:
        result = run_cli(*TINY, "--epochs", "3", "--workdir", str(workdir), "--resume", cwd=tmp_path)
    finally:
        figures.chmod(0o755)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "cannot write" in result.stderr and "reconstructions_e002.png" in result.stderr
    state = checkpoint.decode_checkpoint(workdir / checkpoint.CHECKPOINT_FILE)["state"]
    assert int(state["epoch"]) >= 2  # epoch 2 was checkpointed before its figures failed
    assert not (workdir / checkpoint.PARAMS_FILE).exists()  # the run is unfinished again: no params behind it
    if obstacle == "folder in the way":
        (figures / "reconstructions_e002.png").rmdir()
    train_with_figures(tiny_config(workdir, epochs=3, resume=True), small_mnist)
    assert_params_agree_with_the_checkpoint(workdir)
    assert int(checkpoint.decode_checkpoint(workdir / checkpoint.CHECKPOINT_FILE)["state"]["epoch"]) == 3


def test_the_checkpoint_is_written_before_the_params_and_both_agree(tmp_path, small_mnist):
    workdir = tmp_path / "run"
    train(tiny_config(workdir, epochs=2), small_mnist, log=lambda line: None)
    assert (workdir / checkpoint.PARAMS_FILE).stat().st_mtime_ns >= (
        workdir / checkpoint.CHECKPOINT_FILE).stat().st_mtime_ns
    assert_params_agree_with_the_checkpoint(workdir)
