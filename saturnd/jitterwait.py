"""The runs that wait out their jitter in P5, seen from outside as runs in progress.

This module owns `WaitingRuns`, P5's queue of jittered starts. Each waiting run has its
marker (liveruns.py) from the moment it is queued, with command pid 0, so that the
task's next start skips it under `--no-overlap`, HISTORY shows it going, and
`cassini --kill` reaches it (`saturnd status` lists started runs only). A stop request
cancels a waiting run: no command ran, so it is recorded KILLED in `history` only (the
course's times-exitcodes lists runs that ran).
When the run's time comes, the supervisor renames its marker to the real start and
command pid (`liveruns.rename_marker`).

Invariant: a waiting run's marker, when it has one, is held (locked) until the run is
started or cancelled; `held` counts those descriptors for P5's budget.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saturnd import history, liveruns, taskdir
from saturnd.runrecord import KILLED, RunRecord

if TYPE_CHECKING:
    from saturnd.runsupervisor import RunSpec

__all__ = ["Waiting", "WaitingRuns"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(order=True)
class Waiting:
    """One jittered start: when (monotonic), its number in P5's batch, its spec."""

    due: float
    number: int
    spec: RunSpec = field(compare=False)
    marker: liveruns.Marker | None = field(compare=False, default=None)


class WaitingRuns:
    """P5's jittered starts, soonest first."""

    def __init__(self, p5_pid: int, log: logging.Logger | None) -> None:
        self.p5_pid = p5_pid
        self.log = log
        self.queue: list[Waiting] = []
        self.held = 0  # marker descriptors held

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, waiting: Waiting) -> None:
        """Queue a start and make its marker (a run without one goes on unseen)."""
        try:
            spec = waiting.spec
            dir_fd = os.open(spec.task_dir, _DIR_FLAGS)
            try:
                waiting.marker = liveruns.create_marker(
                    dir_fd, self.p5_pid, waiting.number, spec.start_time, 0, spec.flags
                )
            finally:
                os.close(dir_fd)
            self.held += 1
        except OSError as error:
            if self.log is not None:
                self.log.error(
                    "task %d: cannot mark a waiting run: %s", waiting.spec.task_id, error
                )
        heapq.heappush(self.queue, waiting)

    def next_due(self) -> float | None:
        return self.queue[0].due if self.queue else None

    def pop(self) -> Waiting:
        """The soonest start, out of the queue; its marker now belongs to the caller."""
        waiting = heapq.heappop(self.queue)
        if waiting.marker is not None:
            self.held -= 1
        return waiting

    def drop(self, waiting: Waiting) -> None:
        """Let go of the marker of a popped start that will not run."""
        if waiting.marker is None:
            return
        try:
            dir_fd = os.open(waiting.spec.task_dir, _DIR_FLAGS)
        except OSError:
            os.close(waiting.marker.fd)  # the directory is gone, and the marker with it
            return
        try:
            liveruns.drop_marker(dir_fd, waiting.marker)
        finally:
            os.close(dir_fd)

    def cancel_requested(self, elapsed: int) -> None:
        """Cancel each waiting run with a stop request, recorded KILLED (in `history`
        only) ending `elapsed` seconds after its scheduled start."""
        kept = [waiting for waiting in self.queue if not self._cancel(waiting, elapsed)]
        if len(kept) != len(self.queue):
            self.queue = kept
            heapq.heapify(self.queue)

    def _cancel(self, waiting: Waiting, elapsed: int) -> bool:
        """Cancel `waiting` if a stop request names it; False when none does."""
        spec, marker = waiting.spec, waiting.marker
        if marker is None:
            return False
        try:
            dir_fd = os.open(spec.task_dir, _DIR_FLAGS)
        except OSError:
            return False
        try:
            try:
                os.stat(liveruns.stop_name(self.p5_pid, waiting.number), dir_fd=dir_fd)
            except OSError:
                return False  # no request for this run
            self.held -= 1
            end = spec.start_time + max(0, elapsed)
            try:
                taskdir.lock_runs(dir_fd)
                history.append_history(
                    dir_fd, RunRecord(spec.start_time, end, 0xFFFF, KILLED, spec.flags, 0)
                )
            except OSError as error:
                if self.log is not None:
                    self.log.error(
                        "task %d: cannot record a cancelled run: %s", spec.task_id, error
                    )
                os.close(marker.fd)  # its lock let go: recorded later as abandoned
            else:
                with contextlib.suppress(OSError):  # it closes the marker in any case
                    liveruns.drop_marker(dir_fd, marker)  # and removes the request
        finally:
            os.close(dir_fd)
        if self.log is not None:
            self.log.info("task %d: run waiting for its jitter cancelled (KILL)", spec.task_id)
        return True
