"""Every field of a task, and what each exporter to another scheduler does with it.

This module owns the table that keeps exporters honest: `FIELDS` is every field a
`Task` has (Timing's, Extras', then argv), and each exporter's table says for each one
`MAPPED` (its meaning is carried over; a warning only for a value the other scheduler
cannot hold at all, such as an environment name systemd refuses) or `WARNED` (some
values of it mean something else there, or nothing: a task with such a value gets a
warning line naming the task and the field). A test walks `FIELDS` against every
table, so a field added to the model and forgotten by an exporter fails the tests
instead of vanishing silently from exports.

Rules: pure data; one table per exporter, written by that exporter's owner
(`SYSTEMD`: cassini.systemdexport; `KUBERNETES`: cassini.k8sexport).
"""

from __future__ import annotations

from saturnd.task import Extras
from saturnd.timing import Timing

TYPE_CHECKING = False  # `typing.TYPE_CHECKING` would import typing
if TYPE_CHECKING:
    from typing import Final

__all__ = ["EXPORTERS", "FIELDS", "KUBERNETES", "MAPPED", "SYSTEMD", "WARNED"]

FIELDS: Final = (*Timing._fields, *Extras._fields, "argv")
"""Every field of a task, by the name its class gives it."""

MAPPED: Final = "mapped"
WARNED: Final = "warned"

SYSTEMD: Final[dict[str, str]] = {
    # One OnCalendar= expression per day rule, in the task's zone.
    "minutes": MAPPED,
    "hours": MAPPED,
    "daysofweek": MAPPED,
    "daysofmonth": MAPPED,
    "months": MAPPED,
    "days_or": MAPPED,  # cron's OR: two OnCalendar= lines
    # The zone suffix of OnCalendar=; saturnd's daylight-saving rule differs from
    # systemd's (a start in a spring-forward gap, a wildcard's repeated hour): warned
    # for the tasks it changes in the coming year.
    "zone": WARNED,
    # A user manager starts once per login session (or boot, with lingering), not when
    # saturnd does, and `enable --now` starts an elapsed OnStartupSec= timer at once.
    "reboot": WARNED,
    "env": MAPPED,  # Environment=, quoted
    "stdin": MAPPED,  # StandardInput=data, StandardInputData= (base64: any byte)
    "mailto": WARNED,  # systemd mails nobody: output goes to the journal
    "timeout": MAPPED,  # TimeoutStartSec= of a Type=oneshot service
    "jitter": MAPPED,  # RandomizedDelaySec=
    # systemd never starts a running service again: that is no_overlap; cron's
    # overlapping runs (no_overlap False) cannot be said, so that value is warned.
    "no_overlap": WARNED,
    "catch_up": MAPPED,  # Persistent=true
    # OnFailure= a second unit; saturnd's SATURND_EXIT_CODE... facts are not given.
    "on_failure": WARNED,
    "paused": WARNED,  # the timer is written but not enabled
    "argv": MAPPED,  # ExecStart=, each word quoted for systemd
}

KUBERNETES: Final[dict[str, str]] = {
    # spec.schedule, five cron fields (Timing.format_cron). Kubernetes' parser ORs the
    # day fields unless one is exactly `*`: cron's OR says itself, an AND of two
    # restricted day sets cannot be said (the task is left out, naming days_or).
    "minutes": MAPPED,
    "hours": MAPPED,
    "daysofweek": MAPPED,
    "daysofmonth": MAPPED,
    "months": MAPPED,
    "days_or": MAPPED,
    "reboot": WARNED,  # no schedule: the task is left out, named
    # spec.timeZone; warned when unset (the controller's zone) and for a task that meets
    # a daylight-saving change in the coming year (Kubernetes skips a start in the gap
    # and runs a fixed time twice in the repeated hour).
    "zone": WARNED,
    # The container's env (a later one wins, as in saturnd); a name Kubernetes before
    # 1.34 refuses is warned, one no Kubernetes takes (not printable ASCII) left out.
    "env": MAPPED,
    "stdin": WARNED,  # a container's command gets no input
    "mailto": WARNED,  # Kubernetes mails nobody (MAILTO="" says the same: not warned)
    "timeout": MAPPED,  # jobTemplate.spec.activeDeadlineSeconds
    "jitter": WARNED,  # no random delay
    "no_overlap": MAPPED,  # concurrencyPolicy: Forbid, else Allow
    "catch_up": MAPPED,  # no startingDeadlineSeconds, else k8sexport.NO_CATCH_UP_DEADLINE
    "on_failure": WARNED,  # no command on failure
    "paused": MAPPED,  # spec.suspend
    "argv": MAPPED,  # the container's command, exact (not UTF-8: left out, named)
}

EXPORTERS: Final[dict[str, dict[str, str]]] = {"systemd": SYSTEMD, "kubernetes": KUBERNETES}
"""Each exporter's table, by the exporter's name."""
