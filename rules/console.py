"""Rules of the operator console: login lockout, safe redirects, reasons, roles, the stages' health."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

LOCKOUT_FAILURES = 5
LOCKOUT_PERIOD = timedelta(minutes=15)
MAX_REASON = 255  # position.state_description holds 255 characters

# What each role may do beyond reading the data of its ECs.
ROLE_ACTIONS = {
    "READONLY": frozenset(),
    "OPERATOR": frozenset({"annul", "restore", "decide_match", "not_pagopa", "upload"}),
    "ADMIN": frozenset({"annul", "restore", "decide_match", "not_pagopa", "upload", "registry", "audit"}),
}

# The stages as deployed by prefect.yaml, in the order of the day.
STAGES = (
    "load-positions",
    "publish-positions",
    "receipts",
    "notify-applications",
    "download-reporting-flows",
    "ingest-treasury",
    "reconcile",
    "daily-cycle",
)
FAILED_STATES = frozenset({"FAILED", "CRASHED", "TIMEDOUT"})


def may(role: str, action: str) -> bool:
    """Whether an operator of this role may perform this action (unknown roles may do nothing)."""
    return action in ROLE_ACTIONS.get(role, frozenset())


def is_locked(locked_until: datetime | None, now: datetime) -> bool:
    """Whether an account locked until ``locked_until`` is still locked at ``now``."""
    return locked_until is not None and locked_until > now


def after_failure(failures: int, now: datetime) -> tuple[int, datetime | None]:
    """The failure count after one more wrong password, and the end of the lockout it triggers (if any).

    The count restarts after a lockout, so each further run of LOCKOUT_FAILURES wrong passwords locks again.
    """
    failures += 1
    if failures >= LOCKOUT_FAILURES:
        return 0, now + LOCKOUT_PERIOD
    return failures, None


def clean_reason(text: str | None) -> str:
    """The reason an operator gave for an action, trimmed; ValueError when missing or too long."""
    reason = " ".join((text or "").split())
    if not reason:
        raise ValueError("reason: required")
    if len(reason) > MAX_REASON:
        raise ValueError(f"reason: at most {MAX_REASON} characters")
    return reason


def safe_next(target: str | None, *, root: str, default: str) -> str:
    """A post-login redirect target, only when it is a path inside the console (never another site)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not target.startswith(root.rstrip("/") + "/"):
        return default
    if target.startswith("//"):
        return default
    return target


@dataclass(frozen=True)
class FlowRunInfo:
    """The last run of a flow as the Prefect API reports it."""

    flow_name: str
    run_id: str
    run_name: str
    state: str
    start_time: datetime | None


@dataclass(frozen=True)
class StageHealth:
    """One stage on the dashboard: its backlog, failures, last run and whether that run failed."""

    stage: str
    backlog: int | None
    failures_24h: int | None
    last_run: FlowRunInfo | None
    run_url: str | None

    @property
    def failed(self) -> bool:
        """Whether the stage's last run failed (crashed and timed-out runs count as failed)."""
        return self.last_run is not None and self.last_run.state.upper() in FAILED_STATES


def stage_health(
    *, backlog: Mapping[str, Mapping[str, int]], runs: Iterable[FlowRunInfo], ui_url: str | None
) -> list[StageHealth]:
    """Every stage with its figures and last run; runs come newest first, the first one per flow counts."""
    last: dict[str, FlowRunInfo] = {}
    for run in runs:
        last.setdefault(run.flow_name, run)
    out = []
    for stage in STAGES:
        figures = backlog.get(stage, {})
        run = last.get(stage)
        url = f"{ui_url.rstrip('/')}/runs/flow-run/{run.run_id}" if run is not None and ui_url else None
        out.append(
            StageHealth(
                stage=stage,
                backlog=figures.get("backlog"),
                failures_24h=figures.get("failures_24h"),
                last_run=run,
                run_url=url,
            )
        )
    return out
