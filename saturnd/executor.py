"""The minute loop: clock -> schedule -> spawn.

This module owns the executor process. Once per real minute (at second 0) it reloads
the task table if the listener changed it, asks `schedule.plan` which (task, minute)
pairs are due under the clock-jump and DST rules, records the minute as handled, and
starts the runs.

Rules:
- At most once per (task, minute), across restarts too: the minute is written to
  `last-minute` in the state directory *before* its runs start, so a crash between the
  two can lose that minute's runs but never repeat them. On start, the gap since the
  stored minute is handled like a clock jump; with no stored minute (first start), the
  current minute counts as handled. Each run that starts late for this reason (a
  skipped minute's, or the current minute's on a start past its second 0) is logged
  as "catch-up run of task N for HH:MM after a restart" (or "a clock jump").
- Each time zone with tasks is planned on its own wall clock with its own high-water
  mark (`schedule.plan_zones`); `last-minute` holds the daemon zone's mark on its first
  line, as before zones existed, and one `WALL ZONE` line per other zone. A zone name
  ZoneInfo does not resolve is logged once and its tasks are read in the daemon's zone.
- A task created or removed during minute M counts from minute M+1: the table is
  reloaded at each minute boundary, before planning.
- The executor never waits for a run: all the runs of a minute go to spawn as one
  batch, which forks one short-lived intermediate process and returns; the runs' own
  supervisor (one per batch) starts them and records each one. The executor logs
  nothing per run; the supervisor logs each run as it ends.
- The loop never sleeps past the next minute boundary nor longer than 60 s, and re-reads
  the clock after every wake-up (suspend, NTP steps, the fake clock's jumps) and after
  every minute it handled: the clock may have moved while it planned and forked, and a
  wait that starts after the move would not notice it.
- A minute that cannot be recorded as handled (disk full, read-only directory) starts no
  run: it stays owed, and the first minute that can be recorded runs it by the
  clock-jump rule (a catch-up, or a forward jump). One log line per such minute.
- `last-minute` is replaced through one temporary name, `.last-minute.tmp`, with an
  fsync, before a minute's runs start: one executor runs per state directory (the
  pid-file lock), and a temporary left by a killed one is removed at start instead of
  piling up under a new name each time. A minute without runs, with the same task table
  as the last durable mark and no clock jump, is written in place instead (one `pwrite`,
  no sync): an idle minute then blocks on nothing. If an OS crash loses such a mark,
  the minutes replayed from the older one had no runs under the same table and clock,
  so they still have none.
- @reboot tasks (`timing.reboot`) run once per daemon start: the supervisor tells the
  executor whether this is its first start (`first_start`), and only then does it start
  them, as one batch before its first minute. An executor restarted after a crash, or
  one whose first start failed, never runs them; the clock never does.
- The task's policies (issue 14): a paused task never starts by the clock (nor at a
  start); a --catch-up task runs once, flagged CAUGHT_UP, at the first minute after a
  forward move past the jump rule (a long stop, a machine off or asleep) when it missed
  a start in between (`catch_up_runs`); a --no-overlap start is skipped and recorded
  when a run of the task still goes on (decided in P5, as the batch is consumed, by
  `_run_specs`). The jump rule's late runs are flagged CAUGHT_UP too.
  `start_by_hand` is `cassini --run`'s way in (the listener calls it): one run now,
  flagged BY_HAND, the schedule untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from saturnd import proctitle, schedule, taskdir
from saturnd.clock import Clock
from saturnd.proc import StopFlag
from saturnd.runrecord import BY_HAND, CAUGHT_UP
from saturnd.schedule import ZonePlan
from saturnd.spawn import DEFAULT_KEEP_OUTPUTS, DEFAULT_MAX_OUTPUT, RunSpec, spawn_runs
from saturnd.store import Store, StoreError
from saturnd.timing import Timing

STATE_FILE: Final = "last-minute"
Run = tuple[datetime, int, int]  # (wall minute the run is for, task id, runrecord flags)
_STEADY: Final = ("normal", "none")  # plan kinds that are no clock move
TEMPORARY: Final = f".{STATE_FILE}.tmp"
_WALL_FORMAT: Final = "%Y-%m-%dT%H:%M"


@dataclass(frozen=True)
class Handled:
    """The last real minute handled and the wall-clock high-water mark of the daemon's
    zone (`wall`) and of each other zone that has tasks (`zones`, by IANA name)."""

    epoch_minute: int
    wall: datetime
    zones: Mapping[str, datetime] = field(default_factory=dict)


def load_handled(state_dir: Path, logger: logging.Logger) -> Handled | None:
    """The stored last-minute state, or None if there is none (first start)."""
    path = state_dir / STATE_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        logger.warning("cannot read %s (%s); treating this as a first start", path, error)
        return None
    # The first line is the whole file of versions without zones: "EPOCH WALL" of the
    # daemon's zone. Each further line is "WALL ZONE" (a zone name has no space).
    try:
        first, *others = text.splitlines()
        epoch_text, wall_text = first.split()
        zones: dict[str, datetime] = {}
        for line in others:
            zone_wall, zone = line.split(" ", 1)
            if not zone or zone in zones:
                raise ValueError(f"bad zone line {line!r}")
            zones[zone] = datetime.strptime(zone_wall, _WALL_FORMAT)
        return Handled(int(epoch_text), datetime.strptime(wall_text, _WALL_FORMAT), zones)
    except ValueError:
        logger.warning("%s is malformed (%r); treating this as a first start", path, text)
        return None


def save_handled(state_dir: Path, handled: Handled, *, durable: bool = True) -> None:
    """Write the state. Durably: a temporary file, fsync, rename over the old one (on a
    full disk or a read-only directory this fails, and the minute stays owed). Not
    durably: one `pwrite` into the existing file, which blocks on nothing (falling
    back to the durable way if there is no file to write into)."""
    lines = [f"{handled.epoch_minute} {handled.wall.strftime(_WALL_FORMAT)}\n"]
    lines += [f"{wall.strftime(_WALL_FORMAT)} {zone}\n" for zone, wall in handled.zones.items()]
    data = "".join(lines).encode("ascii")
    path = state_dir / STATE_FILE
    if not durable:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            fd = -1  # missing, a symbolic link, ...: replaced below
        if fd >= 0:
            try:
                if os.pwrite(fd, data, 0) == len(data):
                    if os.fstat(fd).st_size > len(data):
                        os.ftruncate(fd, len(data))
                    return
            except OSError:
                pass  # replaced below
            finally:
                os.close(fd)
    temporary = state_dir / TEMPORARY
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


class Executor:
    """Runs due tasks at each minute boundary until stopped."""

    def __init__(
        self,
        state_dir: Path,
        store: Store,
        clock: Clock,
        logger: logging.Logger,
        stop: StopFlag,
        wake_fd: int | None = None,
        keep_fds: Collection[int] = (),
        max_output: int = DEFAULT_MAX_OUTPUT,
        first_start: bool = False,
        keep_outputs: int = DEFAULT_KEEP_OUTPUTS,
    ) -> None:
        """`first_start`: the daemon's first executor, which runs the @reboot tasks."""
        self.state_dir = state_dir
        self.first_start = first_start
        self.store = store
        self.clock = clock
        self.log = logger
        self.stop = stop
        self.wake_fd = wake_fd
        self.keep_fds = tuple(keep_fds)
        self.max_output = max_output
        self.keep_outputs = keep_outputs
        self.handled = load_handled(state_dir, logger)
        # A mark from an earlier executor: the first minute handled here follows a
        # restart, and its runs start late (see `catch_ups`).
        self.restarted = self.handled is not None
        # The task table changed since the last mark written durably.
        self.changed = True
        # The tasks of other zones than the daemon's, by zone, and the zone names read
        # in the daemon's zone (None: every task is); rebuilt when the table changes.
        self.zoned: dict[str, schedule.ZoneGroup] = {}
        self.daemon_zones: frozenset[str] | None = None
        self.grouped_count = -1
        self.unknown_zones: set[str] = set()  # logged once each
        _remove_stale_temporary(state_dir, logger)

    def run(self) -> int:
        """The minute loop; returns 0 when stopped."""
        attempted: int | None = None  # the last minute tick() was called for
        if self.first_start and not self.stop.stopping:
            self.first_start = False
            self.start_reboot_tasks(self.clock.now())
        while not self.stop.stopping:
            now = self.clock.now()
            epoch_minute = int(now // 60)
            due = self.handled is None or epoch_minute != self.handled.epoch_minute
            if due and epoch_minute != attempted:
                attempted = epoch_minute
                self.tick(epoch_minute, now)
                _reap()
                continue  # read the clock again before waiting: it may have moved
            self.clock.wait((epoch_minute + 1) * 60, self.wake_fd)
            _reap()
        return 0

    def tick(self, epoch_minute: int, now: float) -> None:
        """Handle one new real minute: plan, record it as handled, start the runs."""
        try:
            self.changed = self.store.refresh() or self.changed
        except (OSError, StoreError) as error:  # keep the last table rather than stop
            self.log.error("cannot reload the task table: %s", error)
        timings = self.store.timings  # not tasks: that view decodes every command line
        if self.changed or len(timings) != self.grouped_count:
            self.daemon_zones, self.zoned = self._group(timings)
            self.grouped_count = len(timings)
        groups = {"": schedule.ZoneGroup(None, timings, self.daemon_zones), **self.zoned}
        previous = None if self.handled is None else self.handled.epoch_minute
        marks: dict[str, datetime] = {}
        if self.handled is not None:
            marks.update(self.handled.zones)
            marks[""] = self.handled.wall
        plans = schedule.plan_zones(previous, marks, epoch_minute, groups)
        current = plans[""].current
        paused = self.store.paused_ids()  # cached by the store: free
        if paused:
            plans = {
                name: ZonePlan(zone.current, _without(zone.plan, paused))
                for name, zone in plans.items()
            }
        caught = self._catch_up_policy(plans, marks, previous, groups)
        runs = [run for zone in plans.values() for run in zone.plan.runs]
        moved = [(name, zone) for name, zone in plans.items() if zone.plan.kind not in _STEADY]
        handled = Handled(
            epoch_minute,
            plans[""].plan.last,
            {name: zone.plan.last for name, zone in plans.items() if name},
        )
        # The mark must be on disk before a run starts (at most once per minute across
        # restarts); an idle minute's need not be (see the module docstring).
        durable = bool(runs) or bool(caught) or self.changed or bool(moved)
        try:
            save_handled(self.state_dir, handled, durable=durable)
        except OSError as error:
            # Running without a durable mark could repeat these runs after a restart;
            # not running them leaves the minute owed (see the module docstring).
            self.log.error(
                "cannot record minute %s as handled (%s); its runs wait until a minute "
                "can be recorded",
                current.strftime(_WALL_FORMAT),
                error.strerror or error,
            )
            return
        self.handled = handled
        self.changed = self.changed and not durable
        restarted, self.restarted = self.restarted, False
        cause = "a restart" if restarted else "a clock jump"
        late = int(now) - epoch_minute * 60
        flagged: set[tuple[datetime, int]] = set()
        for zone in plans.values():
            for minute, task_id in catch_ups(zone.plan, zone.current, late, restarted):
                flagged.add((minute, task_id))
                self.log.info(
                    "catch-up run of task %d for %s after %s",
                    task_id,
                    minute.strftime("%H:%M"),
                    cause,
                )
        for _minute, task_id, since in caught:
            self.log.info(
                "catch-up run of task %d (--catch-up: missed its starts since %s) after %s",
                task_id,
                since.strftime(_WALL_FORMAT),
                cause,
            )
        batch: list[Run] = [
            (minute, task_id, CAUGHT_UP if (minute, task_id) in flagged else 0)
            for minute, task_id in runs
        ]
        batch += [(minute, task_id, CAUGHT_UP) for minute, task_id, _since in caught]
        for name, zone in moved:
            self.log.info(
                "clock moved from the last handled minute: %s at %s%s (%d runs)",
                zone.plan.kind,
                zone.current.strftime(_WALL_FORMAT),
                f" in {name}" if name else "",
                len(zone.plan.runs),
            )
        if not batch:
            return
        # Every run of this tick is recorded with the second the tick read from the
        # clock: they start within milliseconds of it, and a fake clock that moves on
        # while we fork must not change what a run is recorded as.
        try:
            spawn_runs(
                _run_specs(self.store, batch, int(now), self.log),
                keep_fds=self.keep_fds,
                logger=self.log,
                max_output=self.max_output,
                keep_outputs=self.keep_outputs,
                role=proctitle.runs_role(current),
            )
        except OSError as error:
            self.log.error(
                "cannot start the %d runs of %s: %s",
                len(batch),
                current.strftime(_WALL_FORMAT),
                error.strerror or error,
            )

    def start_reboot_tasks(self, now: float) -> None:
        """Start every @reboot task once, as one batch recorded at `now`."""
        task_ids = reboot_tasks(self.store.timings)
        paused = self.store.paused_ids()
        task_ids = [task_id for task_id in task_ids if task_id not in paused]
        if not task_ids:
            return
        self.log.info("starting %d @reboot tasks", len(task_ids))
        moment = schedule.local_minute(int(now // 60), None)
        try:
            spawn_runs(
                _run_specs(self.store, [(moment, i, 0) for i in task_ids], int(now), self.log),
                keep_fds=self.keep_fds,
                logger=self.log,
                max_output=self.max_output,
                keep_outputs=self.keep_outputs,
                role="runs at start",
            )
        except OSError as error:
            self.log.error(
                "cannot start the %d @reboot tasks: %s", len(task_ids), error.strerror or error
            )

    def _catch_up_policy(
        self,
        plans: Mapping[str, ZonePlan],
        marks: Mapping[str, datetime],
        previous: int | None,
        groups: Mapping[str, schedule.ZoneGroup],
    ) -> list[tuple[datetime, int, datetime]]:
        """The --catch-up runs of this minute: (minute, task id, the zone's last minute
        handled), found only when a zone's clock moved forward past the jump rule."""
        caught: list[tuple[datetime, int, datetime]] = []
        wanted: frozenset[int] | None = None
        for name, zone in plans.items():
            last = _zone_last(marks, previous, name, groups[name])
            if zone.plan.kind != "correction" or last is None or zone.current <= last:
                continue
            if wanted is None:
                # Rare (a long stop, a machine off): decoding every task's extras is
                # affordable then, and only then.
                wanted = _catch_up_ids(self.store)
            caught += [
                (zone.current, task_id, last)
                for task_id in catch_up_runs(zone.plan, last, zone.current, groups[name], wanted)
            ]
        return caught

    def _group(
        self, timings: Mapping[int, Timing]
    ) -> tuple[frozenset[str] | None, dict[str, schedule.ZoneGroup]]:
        """The zone names the daemon's zone reads (None: all, no task has a zone), and
        one group per other zone over its own tasks. A zone this machine does not know
        is logged once and read in the daemon's zone: its tasks keep running, by the
        daemon's wall clock, rather than never."""
        named: dict[str, dict[int, Timing]] = {}
        for task_id, timing in timings.items():
            if timing.zone:
                named.setdefault(timing.zone, {})[task_id] = timing
        if not named:
            return None, {}
        daemon_zones = {""}
        groups: dict[str, schedule.ZoneGroup] = {}
        for name, tasks in sorted(named.items()):
            tz = self._zone(name)
            if tz is None:
                daemon_zones.add(name)
            else:
                groups[name] = schedule.ZoneGroup(tz, tasks)
        return frozenset(daemon_zones), groups

    def _zone(self, name: str) -> tzinfo | None:
        """The time zone of an IANA name, or None (logged once) when there is none."""
        try:
            if name.isprintable() and " " not in name:
                return ZoneInfo(name)
            reason = "not a zone name"
        except (ZoneInfoNotFoundError, ValueError, OSError) as error:
            reason = str(error.args[0]) if error.args else type(error).__name__
        if name not in self.unknown_zones:
            self.unknown_zones.add(name)
            self.log.warning(
                "unknown time zone %r (%s): its tasks run in the daemon's time zone", name, reason
            )
        return None


def reboot_tasks(timings: Mapping[int, Timing]) -> list[int]:
    """The ids of the tasks that run once per daemon start, in id order."""
    return [task_id for task_id, timing in timings.items() if timing.reboot]


def catch_ups(
    plan: schedule.Plan, current: datetime, late: int, restarted: bool
) -> list[tuple[datetime, int]]:
    """The runs of `plan` that start later than their minute (DESIGN.md "Time": a
    restart is a clock jump from the last minute handled): those of a skipped minute,
    and, on the first minute after a restart that came `late` seconds into it, those
    of the current minute too."""
    return [
        (minute, task_id)
        for minute, task_id in plan.runs
        if minute != current or (restarted and late > 0)
    ]


def catch_up_runs(
    plan: schedule.Plan,
    last: datetime,
    current: datetime,
    group: schedule.ZoneGroup,
    wanted: Collection[int],
) -> list[int]:
    """The ids of the `wanted` (--catch-up) tasks of a zone `group` that run once, for
    `current`, because the zone's clock moved from `last` to `current` by more than the
    jump rule covers and they missed a start in between. Within the rule's range the
    rule itself runs the missed fixed-time minutes; a task that runs for `current`
    anyway does not run twice."""
    if plan.kind != "correction" or current <= last:
        return []
    running = {task_id for _minute, task_id in plan.runs}
    zones = group.zones
    found: list[int] = []
    for task_id in sorted(wanted):
        timing = group.tasks.get(task_id)
        if timing is None or task_id in running or (zones is not None and timing.zone not in zones):
            continue
        if schedule.missed(timing, last, current):
            found.append(task_id)
    return found


def start_by_hand(
    store: Store,
    task_id: int,
    now: int,
    *,
    logger: logging.Logger,
    keep_fds: Collection[int] = (),
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> bool:
    """`cassini --run`: start one run of task `task_id` now, flagged BY_HAND, and return
    at once (spawn's two forks); False when there is no such task. The schedule, and
    `last-minute`, are unchanged. A paused task runs (pausing stops the schedule, not
    the user); --no-overlap applies (the start is skipped and recorded as such when a
    run is still going). Raises OSError when the forks fail (no run started)."""
    if task_id not in store.timings:
        return False
    logger.info("run of task %d started by hand", task_id)
    moment = schedule.local_minute(now // 60, None)
    spawn_runs(
        _run_specs(store, [(moment, task_id, BY_HAND)], now, logger),
        keep_fds=keep_fds,
        logger=logger,
        max_output=max_output,
        role=f"run of task {task_id} by hand",
    )
    return True


def _zone_last(
    marks: Mapping[str, datetime], previous: int | None, name: str, group: schedule.ZoneGroup
) -> datetime | None:
    """The zone's last minute handled, as `schedule.plan_zones` reads it."""
    last = marks.get(name)
    if last is None and previous is not None:
        last = schedule.local_minute(previous, group.tz)
    return last


def _without(plan: schedule.Plan, task_ids: Collection[int]) -> schedule.Plan:
    """`plan` without the runs of `task_ids`."""
    return replace(plan, runs=tuple(run for run in plan.runs if run[1] not in task_ids))


def _catch_up_ids(store: Store) -> frozenset[int]:
    """The tasks with --catch-up that are not paused (every task's extras decoded:
    0.6 s at 100,000 tasks, once per long stop)."""
    paused = store.paused_ids()
    return frozenset(
        task_id
        for task_id, entry in store.tasks.items()
        if entry.extras.catch_up and task_id not in paused
    )


def _run_specs(
    store: Store, runs: Iterable[Run], start: int, logger: logging.Logger
) -> Iterator[RunSpec]:
    """The runs' specs, computed where they are consumed: in the runs' supervisor (P5),
    so the executor forks at once and decodes no command line. A --no-overlap task
    whose previous run is still going (or that starts twice in this batch) has its
    start skipped: recorded and logged here, never spawned."""
    tasks = store.tasks
    started: set[int] = set()
    for minute, task_id, flags in runs:
        entry = tasks.get(task_id)
        if entry is None:
            continue
        task_dir = store.task_dir(task_id)
        if entry.extras.no_overlap and (task_id in started or taskdir.runs_in_progress(task_dir)):
            _skip(task_dir, task_id, minute, start, flags, logger)
            continue
        started.add(task_id)
        yield RunSpec(task_id, task_dir, entry.argv, start, entry.extras, flags)


def _skip(
    task_dir: Path, task_id: int, minute: datetime, start: int, flags: int, logger: logging.Logger
) -> None:
    """Record (with the start's flags: by hand, a catch-up) and log a --no-overlap
    start skipped."""
    logger.info(
        "start of task %d for %s skipped: its previous run is still going (--no-overlap)",
        task_id,
        minute.strftime(_WALL_FORMAT),
    )
    try:
        taskdir.record_skipped(task_dir, start, flags)
    except FileNotFoundError:
        pass  # the task was removed meanwhile: nothing to record
    except OSError as error:
        logger.error("cannot record the skipped start of task %d: %s", task_id, error)


def _remove_stale_temporary(state_dir: Path, logger: logging.Logger) -> None:
    """Remove what a killed executor left while replacing `last-minute` (also the
    `.last-minute.<pid>.tmp` names of earlier versions). One entry at a time: a state
    directory of 100,000 tasks listed as a whole (Path.glob) cost 22 MiB at start."""
    prefix = f".{STATE_FILE}."
    try:
        entries = os.scandir(state_dir)
    except OSError as error:
        logger.warning("cannot list %s: %s", state_dir, error)
        return
    with entries:
        names = [
            entry.name
            for entry in entries
            if entry.name.startswith(prefix) and entry.name.endswith("tmp")
        ]
    for name in names:
        path = state_dir / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("cannot remove %s: %s", path, error)
            continue
        logger.info("removed %s left by an executor that was killed", path)


def _reap() -> None:
    """Collect any child that ended (spawn waits for its own; this is a safety net)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
