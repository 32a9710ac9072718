"""Daily-cycle tasks: the day's figures per EC and the one summary artifact that ends the cycle."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from models.db import session_scope
from store.status import ec_figures

ALL_ECS = "*"  # the EC of a stage that runs once for every EC (receipts, notifications)


@dataclass(frozen=True)
class StageOutcome:
    """How one stage ended for one EC (or for all of them, ``ec == ALL_ECS``)."""

    stage: str
    ec: str
    ok: bool
    seconds: float
    runs: int = 1
    target: str | None = None  # e.g. the treasury source
    message: str = ""
    cpu_seconds: float = 0.0  # of the process that ran the cycle (its tasks run in it), for sizing workers

    def describe(self) -> str:
        """``stage (target)`` as an operator reads it."""
        return f"{self.stage} ({self.target})" if self.target else self.stage


def summary_rows(figures: list[dict[str, Any]], stages: list[StageOutcome]) -> list[dict[str, Any]]:
    """One row per EC: its figures and the stages that failed for it (a stage of all ECs fails for each)."""
    rows = []
    for f in figures:
        failed = [s for s in stages if not s.ok and s.ec in (f["id_dominio"], ALL_ECS)]
        rows.append({
            "EC": f["id_dominio"], "name": f["name"], "positions": f["positions"],
            "to publish": f["positions_pending_publication"], "payments": f["receipts"],
            "paid": str(f["paid"]), "flows": f["flows"], "money": str(f["money"]), "cashed": str(f["cashed"]),
            "anomalies": f["anomalies"], "notifications pending": f["notifications_pending"],
            "failed stages": "; ".join(f"{s.describe()}: {s.message}" for s in failed) or "-",
        })  # fmt: skip
    return rows


@task(name="daily-figures", cache_policy=NO_CACHE)
def daily_figures(ecs: list[str]) -> list[dict[str, Any]]:
    """Per EC of the cycle: positions, payments, flows, money, cashed, anomalies (a few grouped queries)."""
    with session_scope() as session:
        return [asdict(f) for f in ec_figures(session) if f.id_dominio in ecs]


@task(name="publish-daily-summary", cache_policy=NO_CACHE)
def publish_daily_summary(figures: list[dict[str, Any]], stages: list[StageOutcome]) -> list[dict[str, Any]]:
    """The cycle's one artifact, ``daily-cycle-summary``: the day per EC with the stages that failed."""
    rows = summary_rows(figures, stages)
    failed = [s for s in stages if not s.ok]
    seconds = ", ".join(f"{s.describe()} {s.ec} {s.seconds:.1f}s" for s in stages)
    create_table_artifact(
        key="daily-cycle-summary",
        table=rows,
        description=(f"The day per EC; {len(failed)} of {len(stages)} stage runs failed. " if failed
                     else f"The day per EC; all {len(stages)} stage runs completed. ") + f"Stages: {seconds}",
    )
    return rows
