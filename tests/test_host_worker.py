"""The background writer: tasks run in order, off the training thread, and a failure reaches the
training thread as the error it was."""

import threading

import pytest
from conftest import run_cli

from benchmarks.main_job import COMPILE_LINE, COUNT_COMPILES
from vaejax.errors import VaejaxError
from vaejax.host_worker import HostWorker


def test_tasks_run_in_order_on_another_thread_and_drain_waits_for_them():
    worker, seen, release = HostWorker(), [], threading.Event()
    worker.submit("slow", lambda: (release.wait(5), seen.append(("first", threading.current_thread().name))))
    worker.submit("fast", lambda: seen.append(("second", threading.current_thread().name)))
    assert seen == []  # the first task is still waiting: submit did not block
    release.set()
    worker.drain()
    assert [name for name, _ in seen] == ["first", "second"]
    assert {thread for _, thread in seen} == {"vaejax-host-work"}
    assert set(worker.seconds) == {"slow", "fast"}
    worker.close()


def test_a_failed_task_is_raised_in_the_training_thread_and_later_tasks_are_skipped():
    worker, ran = HostWorker(), []
    worker.submit("checkpoint", lambda: (_ for _ in ()).throw(VaejaxError("cannot write checkpoint: disk full")))
    worker.submit("figures", lambda: ran.append("figures"))
    with pytest.raises(VaejaxError, match="disk full"):
        worker.drain()
    assert ran == []
    worker.close()  # the error was reported once; closing after it is quiet


def test_after_a_failure_nothing_more_runs_even_once_the_error_was_raised():
    worker, ran, release = HostWorker(), [], threading.Event()
    worker.submit("checkpoint", lambda: (release.wait(5), (_ for _ in ()).throw(VaejaxError("disk full"))))
    worker.submit("checkpoint", lambda: ran.append("next checkpoint"))
    release.set()
    with pytest.raises(VaejaxError, match="disk full"):
        worker.drain()
    worker.submit("checkpoint", lambda: ran.append("a later one"))  # the error was reported: no second raise
    worker.close()
    assert ran == []


def test_an_interrupted_run_finishes_its_checkpoints_but_not_its_figures():
    worker, ran, started, release = HostWorker(), [], threading.Event(), threading.Event()
    worker.submit("figures", lambda: (started.set(), release.wait(5), ran.append("figures 1")))
    worker.submit("checkpoint", lambda: ran.append("checkpoint 2"))
    worker.submit("figures", lambda: ran.append("figures 2"))
    started.wait(5)
    worker.keep_only("checkpoint")
    release.set()
    worker.close()
    assert ran == ["figures 1", "checkpoint 2"]  # the task already running finishes


def test_submit_waits_when_the_writer_is_behind():
    worker, started, release = HostWorker(queued_tasks=1), threading.Event(), threading.Event()
    worker.submit("figures", lambda: (started.set(), release.wait(5)))
    started.wait(5)  # running, so out of the queue
    worker.submit("figures", lambda: None)  # queued: the queue is full now
    blocked = threading.Thread(target=worker.submit, args=("figures", lambda: None))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # training would wait here rather than run further ahead
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    worker.close()


def test_a_run_compiles_each_program_once(tmp_path):
    """No stray compilations: two epochs of the default model with every figure compile a fixed,
    small set of programs (eager Flax initialisation alone used to compile dozens)."""
    result = run_cli("--epochs", "2", "--limit", "256", "--no-tensorboard", "--workdir", str(tmp_path / "run"),
                     env=COUNT_COMPILES)
    assert result.returncode == 0, result.stderr
    compiled = [line.split("compilation of ")[1].split(" ")[0] for line in result.stderr.splitlines()
                if COMPILE_LINE in line]
    # One training program (per step on CPU, the epoch scan on accelerators), one evaluation program.
    assert sum(compiled.count(name) for name in ("jit(train_step)", "jit(train_epoch)")) == 1, compiled
    assert sum(compiled.count(name) for name in ("jit(eval_step)", "jit(evaluate)")) == 1, compiled
    assert len(compiled) <= 12, compiled
