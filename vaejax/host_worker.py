"""A background thread for a run's host work (checkpoint writes, figures, TensorBoard), so that it
overlaps the next epoch on the device instead of holding it up.

Tasks run one at a time in the order they were submitted, on host copies only. A task's error is
raised in the training thread at the next `submit` or `drain`, so it ends the run as if it had
happened there; `drain` waits for everything submitted so far (end of run, interrupt, error).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable


class HostWorker:
    """One daemon thread running submitted tasks in order; `seconds` sums each kind's time."""

    def __init__(self):
        self.tasks: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.thread = threading.Thread(target=self._run, name="vaejax-host-work", daemon=True)
        self.thread.start()

    def submit(self, kind: str, task: Callable[[], object]) -> None:
        """Queue `task` (its time counted under `kind`); first raise an earlier task's error."""
        self._raise_error()
        self.tasks.put((kind, task))

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
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _run(self) -> None:
        while (item := self.tasks.get()) is not None:
            kind, task = item
            started = time.perf_counter()
            try:
                if self.error is None:  # after a failure the rest is skipped: the run is ending
                    task()
            except BaseException as error:  # handed to the training thread
                self.error = error
            finally:
                self.seconds[kind] += time.perf_counter() - started
                self.tasks.task_done()
        self.tasks.task_done()
