"""Reporting flows: list, and a flow's lines with their anomalies, labels and links to receipts."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from models.reporting import FlowState, ReportingFlow
from store.console import flow_lines, labels_of, visible_creditors
from store.reporting import FlowFilter, line_details, list_flows
from web.console.forms import PAGE_SIZE, choice, day, flag, page, text
from web.console.render import render, render_list
from web.console.security import NotFound, SessionDep, UserDep, require_ec

router = APIRouter()
LINES_PER_PAGE = 200


@router.get("/flows", name="flows", response_class=HTMLResponse)
def flows(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    """Reporting flows of the operator's ECs, by id, IUV, state and dates."""
    q = request.query_params
    errors: dict[str, str] = {}
    creditors = visible_creditors(session, allowed=user.creditors)
    filters = FlowFilter(
        id_dominio=choice(q, "ente", {c.id_dominio for c in creditors}),
        data_da=day(q, "dal", errors),
        data_a=day(q, "al", errors),
        stato=choice(q, "stato", {s.value for s in FlowState}),
        iuv=text(q, "iuv", limit=35),
        id_flusso=text(q, "flusso", limit=35),
    )
    current = page(q)
    allowed = None if user.creditors is None else set(user.creditors)
    return render_list(
        request,
        "flows.html",
        listed=list_flows(session, filters=filters, allowed_creditors=allowed, page=current, size=PAGE_SIZE),
        current=current,
        title="Flussi di rendicontazione",
        user=user,
        creditors=creditors,
        filters=filters,
        errors=errors,
        states=[s.value for s in FlowState],
    )


@router.get("/flows/{flow_id}", name="flow", response_class=HTMLResponse)
def flow_page(request: Request, flow_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    """A flow: header, anomalies, labels, and its lines a page at a time."""
    flow = session.get(ReportingFlow, flow_id)
    if flow is None:
        raise NotFound(f"flusso {flow_id}")
    require_ec(user, flow.id_dominio)
    q = request.query_params
    after = int(q["dopo"]) if q.get("dopo", "").isdigit() else 0
    only_anomalies = flag(q, "anomalie")
    lines = flow_lines(
        session, flow_id=flow_id, after=after, only_anomalies=only_anomalies, size=LINES_PER_PAGE
    )
    collections, receipts, positions = line_details(session, lines=lines)
    line_labels = labels_of(
        session, id_dominio=flow.id_dominio, subject="line", keys=[str(ln.id) for ln in lines]
    )
    flow_labels = labels_of(session, id_dominio=flow.id_dominio, subject="flow", keys=[str(flow.id)])
    return render(
        request,
        "flow.html",
        title="Identificativo flusso",
        detail=flow.id_flusso,
        user=user,
        flow=flow,
        lines=lines,
        collections=collections,
        receipts=receipts,
        positions=positions,
        line_labels=line_labels,
        flow_labels=flow_labels.get(str(flow.id), []),
        only_anomalies=only_anomalies,
        next_after=lines[-1].line_index if len(lines) == LINES_PER_PAGE else None,
    )
