"""The listener's store: the task store plus the two requests that act on processes.

This module owns `ServedStore`, what the listener hands to `handlers`: every file
request goes to the `store.Store` it wraps, unchanged; RUN starts a run now through the
executor's `start_by_hand` (two forks: the listener never waits for the run itself),
and KILL asks the runs in progress of a task to stop (`taskdir.request_stop`: SIGTERM,
then SIGKILL after a grace, done by each run's supervising process, which records the
run as killed).

Rules:
- The time of a run started by hand is the daemon's clock (`--clock` in tests), as for
  the schedule's runs.
- A paused task's RUN still runs: pausing stops the schedule, not the user.
- OS failures become `StoreError` (the listener answers `ER EM`, never `OK`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence

from saturnd import taskdir
from saturnd.clock import Clock
from saturnd.executor import start_by_hand
from saturnd.protocol import EXITCODE_ABNORMAL, TaskEntry
from saturnd.runrecord import EXITED, RunRecord
from saturnd.spawn import DEFAULT_MAX_OUTPUT
from saturnd.statefile import describe
from saturnd.store import Store, StoreError
from saturnd.task import Task
from saturnd.timing import Timing

__all__ = ["ServedStore"]


class ServedStore:
    """`handlers.TaskStore` for the listener: `store` for the files, plus RUN and KILL."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        logger: logging.Logger,
        *,
        keep_fds: Collection[int] = (),
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        """`keep_fds` and `max_output` are the executor's: a run by hand is like any run."""
        self.store = store
        self._clock = clock
        self._log = logger
        self._keep_fds = tuple(keep_fds)
        self._max_output = max_output

    # --- acting on runs -------------------------------------------------------------

    def run_now(self, task_id: int) -> bool:
        """Start a run of the task now, flagged BY_HAND; False if there is no such task.
        Returns once the run's supervising process is started, not when the run ends."""
        try:
            return start_by_hand(
                self.store,
                task_id,
                int(self._clock.now()),
                logger=self._log,
                keep_fds=self._keep_fds,
                max_output=self._max_output,
            )
        except OSError as error:
            raise StoreError(f"cannot start a run of task {task_id}: {describe(error)}") from error

    def stop_runs(self, task_id: int) -> int:
        """Tell every run in progress of the task to stop; how many there were."""
        try:
            # The clock is the daemon's: a run whose supervising process was killed is
            # recorded here, ending now (the fake clock's, under --clock).
            return taskdir.request_stop(self.store.task_dir(task_id), int(self._clock.now()))
        except OSError as error:
            raise StoreError(
                f"cannot stop the runs of task {task_id}: {describe(error)}"
            ) from error

    # --- the store's, unchanged -----------------------------------------------------

    @property
    def tasks(self) -> Mapping[int, TaskEntry]:
        return self.store.tasks

    def list_reply(self) -> bytes:
        return self.store.list_reply()

    def list_ex_reply(self) -> bytes:
        return self.store.list_ex_reply()

    def create(self, timing: Timing, argv: tuple[bytes, ...]) -> int:
        return self.store.create(timing, argv)

    def create_task(self, task: Task) -> int:
        return self.store.create_task(task)

    def replace(self, remove_ids: Iterable[int], tasks: Sequence[Task]) -> list[int]:
        return self.store.replace(remove_ids, tasks)

    def remove(self, task_id: int) -> bool:
        return self.store.remove(task_id)

    def set_paused(self, task_id: int, paused: bool) -> bool:
        return self.store.set_paused(task_id, paused)

    def open_runs(self, task_id: int) -> tuple[int, int] | None:
        return self.store.open_runs(task_id)

    def output(self, task_id: int, stream: str) -> bytes | None:
        return self.store.output(task_id, stream)

    def history(self, task_id: int) -> tuple[RunRecord, ...]:
        """The recorded runs, then one record per run in progress (END 0: not ended)."""
        done = self.store.history(task_id)
        try:
            going = taskdir.runs_in_progress(self.store.task_dir(task_id))
        except OSError:
            going = []
        if going:
            # A run's supervisor drops its marker just after recording it: a run both
            # recorded and marked has ended, and is shown once.
            first = min(start for start, _ in going)
            ended = {(run.start, run.pid) for run in done if run.start >= first}
            going = [run for run in going if run not in ended]
        return done + tuple(
            RunRecord(start, 0, EXITCODE_ABNORMAL, EXITED, 0, pid) for start, pid in going
        )

    def kept_output(self, task_id: int, stream: str, start: int) -> tuple[bool, bytes] | None:
        return self.store.kept_output(task_id, stream, start)
