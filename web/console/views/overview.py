"""The home page (the operator's ECs), each EC's dashboard and the items behind an anomaly label."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import select

from models.registry import Creditor
from rules.calendar import italian_today
from rules.console import stage_health
from store.backlog import stage_backlog
from store.console import cashed_total, payments_on_day, visible_creditors
from store.report_data import ANOMALY_LABELS, reconciliation_data
from store.status import ec_figures
from web.console.render import redirect, render
from web.console.security import NotFound, SessionDep, UserDep, require_ec
from web.console.stages import PrefectUnavailable, last_runs, prefect_ui_url

router = APIRouter()


def _stages(session: SessionDep) -> tuple[list, str | None]:  # type: ignore[type-arg]
    try:
        runs = last_runs()
        problem = None if runs is not None else "unconfigured"
    except PrefectUnavailable:
        runs, problem = None, "unreachable"
    return stage_health(backlog=stage_backlog(session), runs=runs or [], ui_url=prefect_ui_url()), problem


@router.get("/", name="home", response_class=HTMLResponse, response_model=None)
def home(request: Request, session: SessionDep, user: UserDep) -> Response:
    """The ECs the operator sees with their figures (one EC: straight to its dashboard)."""
    creditors = visible_creditors(session, allowed=user.creditors)
    if len(creditors) == 1:
        return redirect(request, "dashboard", id_dominio=creditors[0].id_dominio)
    figures = {f.id_dominio: f for f in ec_figures(session) if user.can_see(f.id_dominio)}
    today = italian_today()
    paid = {c.id_dominio: payments_on_day(session, id_dominio=c.id_dominio, day=today) for c in creditors}
    stages, prefect = _stages(session)
    return render(
        request,
        "home.html",
        title="Cruscotto",
        user=user,
        creditors=creditors,
        figures=figures,
        paid=paid,
        stages=stages,
        prefect=prefect,
        today=today,
    )


def _creditor(session: SessionDep, user: UserDep, id_dominio: str) -> Creditor:
    require_ec(user, id_dominio)
    creditor = session.exec(select(Creditor).where(Creditor.id_dominio == id_dominio)).first()
    if creditor is None:
        raise NotFound(f"ente {id_dominio}")
    return creditor


@router.get("/ec/{id_dominio}", name="dashboard", response_class=HTMLResponse)
def dashboard(request: Request, id_dominio: str, session: SessionDep, user: UserDep) -> HTMLResponse:
    """One EC's day: payments, cashed and uncashed totals, anomalies by label, stage health."""
    creditor = _creditor(session, user, id_dominio)
    today = italian_today()
    data = reconciliation_data(session, id_dominio=id_dominio, report_date=today, window_days=1, max_items=0)
    cashed = cashed_total(session, id_dominio=id_dominio)
    stages, prefect = _stages(session)
    anomalies = [(label, data.label_counts.get(label, 0)) for label in ANOMALY_LABELS]
    totals = {g.label: g.total for g in data.anomalies}
    return render(
        request,
        "dashboard.html",
        title="Cruscotto",
        detail=creditor.name,
        user=user,
        creditor=creditor,
        data=data,
        cashed=cashed,
        paid=payments_on_day(session, id_dominio=id_dominio, day=today),
        anomalies=anomalies,
        totals=totals,
        stages=stages,
        prefect=prefect,
        today=today,
    )


@router.get("/ec/{id_dominio}/labels/{label}", name="label_items", response_class=HTMLResponse)
def label_items(
    request: Request, id_dominio: str, label: str, session: SessionDep, user: UserDep
) -> HTMLResponse:
    """The items behind an anomaly label of an EC, linked to their positions, flows and movements."""
    creditor = _creditor(session, user, id_dominio)
    if label not in ANOMALY_LABELS:
        raise NotFound(f"etichetta {label}")
    data = reconciliation_data(
        session, id_dominio=id_dominio, report_date=italian_today(), window_days=1, max_items=200
    )
    group = next((g for g in data.anomalies if g.label == label), None)
    return render(
        request,
        "labels.html",
        title="Elementi con etichetta",
        detail=f"{label} · {creditor.name}",
        user=user,
        creditor=creditor,
        label=label,
        group=group,
    )
