"""A background thread for a run's host work (checkpoint writes, figures, TensorBoard), so that it
overlaps the next epoch on the device instead of holding it up.

Tasks run one at a time in the order they were submitted, on host copies only. The queue is
bounded: when the thread falls behind, `submit` waits, so training never runs more than a couple of
epochs ahead of its checkpoints. The first task that fails stops the thread's work for good (later
tasks are skipped) and its error is raised once in the training thread, at the next `submit` or
`drain`, so it ends the run as if it had happened there.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable

QUEUED_TASKS = 8  # about two epochs of checkpoint, figures and TensorBoard


class HostWorker:
    """One daemon thread running submitted tasks in order; `seconds` sums each kind's time."""

    def __init__(self, queued_tasks: int = QUEUED_TASKS):
        self.tasks: queue.Queue = queue.Queue(maxsize=queued_tasks)
        self.error: BaseException | None = None  # the first failure; kept, so nothing runs after it
        self.reported = False
        self.kept_kinds: set[str] | None = None  # when set (`keep_only`), other kinds are skipped
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.thread = threading.Thread(target=self._run, name="vaejax-host-work", daemon=True)
        self.thread.start()

    def submit(self, kind: str, task: Callable[[], object]) -> None:
        """Queue `task` (its time counted under `kind`), waiting while the queue is full; first
        raise an earlier task's error."""
        self._raise_error()
        self.tasks.put((kind, task))

    def keep_only(self, *kinds: str) -> None:
        """Skip every task not of `kinds` from now on, queued ones included (an interrupted run
        finishes its checkpoints, not its figures)."""
        self.kept_kinds = set(kinds)

    def drain(self) -> None:
        """Wait until every task submitted so far has run; raise the first error among them."""
        self.tasks.join()
        self._raise_error()

    def close(self) -> None:
        """Drain, then stop the thread (also after an error, which is raised last)."""
        try:
            self.drain()
        finally:
            self.tasks.put(None)
            self.thread.join()

    def _raise_error(self) -> None:
        if self.error is not None and not self.reported:
            self.reported = True
            raise self.error

    def _run(self) -> None:
        while (item := self.tasks.get()) is not None:
            kind, task = item
            started = time.perf_counter()
            try:
                skipped = self.error is not None or (self.kept_kinds is not None and kind not in self.kept_kinds)
                if not skipped:
                    task()
            except BaseException as error:  # handed to the training thread
                self.error = error
            finally:
                self.seconds[kind] += time.perf_counter() - started
                self.tasks.task_done()
        self.tasks.task_done()
