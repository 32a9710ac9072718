"""Persistence of reporting flows: revisions, lines stored in batches, links to collections, API reads.

``ingest_flow`` stores one flow revision in the caller's transaction: the flow row, then each batch of lines
checked (``rules.reporting``), linked to the collections of their (EC, IUV, transfer index) and inserted with
set-based statements, so memory stays flat whatever the flow's size. A newer revision marks the older ones
OBSOLETA and releases their collections for the new lines.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import String, any_, bindparam, exists, func, insert, literal, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col, select

from models.counters import Watermark
from models.payments import Collection, Receipt
from models.positions import Position
from models.registry import Creditor, Station
from models.reporting import FlowState, LineState, ReportingFlow, ReportingLine
from models.types import utcnow
from rules.calendar import day_start as _day_start
from rules.reporting import (
    CURRENT,
    OBSOLETE,
    SKIP,
    UNKNOWN_OUTCOME_VALUE,
    Anomaly,
    Candidate,
    FlowChecker,
    FlowHeader,
    FlowLine,
    LineDecision,
    decide_line,
    flow_state,
    iuv_in_space,
    read_flow,
    revision_action,
)

SKIPPED = "SKIPPED"
_ROME = ZoneInfo("Europe/Rome")


@dataclass(frozen=True)
class CreditorScope:
    """What the reporting stage needs to know of an EC: its IUV space and how its station downloads flows."""

    id_dominio: str
    name: str
    aux_digit: int
    segregation_code: str | None
    application_code: str | None
    protocol: str
    station_id: str
    broker_id: str
    password_ref: str | None
    api_key_ref: str | None

    def owns(self, iuv: str) -> bool:
        """Whether the IUV is in the EC's IUV space."""
        return iuv_in_space(
            iuv,
            aux_digit=self.aux_digit,
            segregation_code=self.segregation_code,
            application_code=self.application_code,
        )


@dataclass
class IngestResult:
    """What storing one flow revision did."""

    flow_id: int | None
    action: str
    psp_id: str | None = None
    state: str | None = None
    lines: int = 0
    amount: Decimal = field(default_factory=lambda: Decimal("0.00"))
    states: Counter[str] = field(default_factory=Counter)
    anomalies: Counter[str] = field(default_factory=Counter)
    flow_anomalies: list[Anomaly] = field(default_factory=list)
    obsoleted: list[int] = field(default_factory=list)


# --- registry and cursors -------------------------------------------------------------------------


def reporting_creditors(session: Session, *, id_dominio: str | None = None) -> list[CreditorScope]:
    """The enabled ECs with reporting enabled (or the one named, whatever its switch), with their station."""
    stmt = select(Creditor, Station).join(Station, col(Station.id_stazione) == col(Creditor.id_stazione))
    if id_dominio is None:
        stmt = stmt.where(
            col(Creditor.reporting_enabled).is_(True),
            col(Creditor.enabled).is_(True),
            col(Station.enabled).is_(True),
        )
    else:
        stmt = stmt.where(Creditor.id_dominio == id_dominio)
    return [
        CreditorScope(
            id_dominio=c.id_dominio,
            name=c.name,
            aux_digit=c.aux_digit,
            segregation_code=c.segregation_code,
            application_code=c.application_code,
            protocol=s.reporting,
            station_id=s.id_stazione,
            broker_id=s.id_intermediario,
            password_ref=s.password_ref,
            api_key_ref=s.api_key_ref,
        )
        for c, s in session.exec(stmt.order_by(col(Creditor.id_dominio))).all()
    ]


def get_watermark(session: Session, *, name: str) -> str | None:
    """The value of a named cursor, if set."""
    row = session.get(Watermark, name)
    return row.value if row is not None else None


def advance_watermark(session: Session, *, name: str, value: datetime) -> bool:
    """Move a timestamp cursor forward (never back); returns whether it moved."""
    text = value.isoformat()
    row = session.get(Watermark, name, with_for_update=True)
    if row is not None and datetime.fromisoformat(row.value) >= value:
        return False
    if row is None:
        builder = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        stmt = builder(Watermark).values(name=name, value=text, updated_at=utcnow())
        session.execute(
            stmt.on_conflict_do_update(index_elements=["name"], set_={"value": text, "updated_at": utcnow()})
        )
    else:
        row.value, row.updated_at = text, utcnow()
        session.add(row)
    session.flush()
    return True


def stored_revisions(
    session: Session, *, id_dominio: str, ids: Iterable[str]
) -> dict[str, list[tuple[str, int, datetime | None]]]:
    """For each flow id already stored for the EC: its (PSP, revision, published_at) rows."""
    found: dict[str, list[tuple[str, int, datetime | None]]] = defaultdict(list)
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), 500):
        rows = session.exec(
            select(
                ReportingFlow.id_flusso,
                ReportingFlow.psp_id,
                ReportingFlow.revision,
                ReportingFlow.published_at,
            ).where(
                ReportingFlow.id_dominio == id_dominio,
                col(ReportingFlow.id_flusso).in_(wanted[start : start + 500]),
            )
        ).all()
        for id_flusso, psp, revision, published in rows:
            found[id_flusso].append((psp, revision, published))
    return dict(found)


# --- ingestion ------------------------------------------------------------------------------------


def _claim_flow_row(session: Session, *, row: dict[str, Any]) -> int | None:
    """Insert the flow row; None when a concurrent run stored the same revision first."""
    builder = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        builder(ReportingFlow)
        .values(row)
        .on_conflict_do_nothing(index_elements=["id_dominio", "id_flusso", "psp_id", "revision"])
        .returning(col(ReportingFlow.id))
    )
    found = session.execute(stmt).first()
    return int(found[0]) if found is not None else None


def obsolete_older(
    session: Session, *, id_dominio: str, id_flusso: str, psp_id: str, revision: int
) -> list[int]:
    """Mark the older revisions OBSOLETA and release the collections their lines had taken."""
    older = list(
        session.exec(
            select(ReportingFlow.id).where(
                ReportingFlow.id_dominio == id_dominio,
                ReportingFlow.id_flusso == id_flusso,
                ReportingFlow.psp_id == psp_id,
                ReportingFlow.revision < revision,
            )
        ).all()
    )
    if not older:
        return []
    session.execute(
        update(ReportingFlow).where(col(ReportingFlow.id).in_(older)).values(state=FlowState.OBSOLETA.value)
    )
    old_lines = select(ReportingLine.id).where(col(ReportingLine.flow_id).in_(older))
    session.execute(
        update(Collection).where(col(Collection.flow_line_id).in_(old_lines)).values(flow_line_id=None)
    )
    return [int(i) for i in older if i is not None]


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _member(session: Session, column: Any, values: list[str]) -> Any:
    """``column IN values``; on PostgreSQL ``= ANY(array)``: one parameter, an index condition even in the
    generic plans psycopg's prepared statements get (a long IN list there becomes a linear filter)."""
    if _is_pg(session):
        return column == any_(literal(values, type_=ARRAY(String)))
    return column.in_(values)


def _link_context(
    session: Session, *, id_dominio: str, iuvs: set[str]
) -> tuple[dict[tuple[str, int], list[Candidate]], dict[str, int]]:
    """The collections of these IUVs (by IUV and transfer index) and the EC's positions of these IUVs."""
    candidates: dict[tuple[str, int], list[Candidate]] = defaultdict(list)
    positions: dict[str, int] = {}
    wanted = sorted(iuvs)
    step = (len(wanted) or 1) if _is_pg(session) else 500  # SQLite: far below its bound-variable limit
    for start in range(0, len(wanted), step):
        chunk = wanted[start : start + step]
        columns: list[Any] = [
            Collection.id,
            Collection.iuv,
            Collection.iur,
            Collection.transfer_index,
            Collection.amount,
            Collection.position_id,
            Collection.flow_line_id,
            Receipt.psp_id,
        ]
        rows = session.execute(
            select(*columns)
            .select_from(Collection)
            .outerjoin(Receipt, col(Receipt.id) == col(Collection.receipt_pk))
            .where(Collection.id_dominio == id_dominio, _member(session, col(Collection.iuv), chunk))
            .order_by(col(Collection.id))
        ).all()
        for cid, iuv, iur, index, amount, position_id, line_id, psp in rows:
            candidates[(iuv, index)].append(
                Candidate(
                    id=cid,
                    iur=iur,
                    amount=amount,
                    position_id=position_id,
                    psp_id=psp,
                    linked=line_id is not None,
                )
            )
        for pid, iuv in session.execute(
            select(Position.id, Position.iuv).where(
                Position.id_dominio == id_dominio, _member(session, col(Position.iuv), chunk)
            )
        ).all():
            positions[iuv] = pid
    return candidates, positions


_PG_INSERT_LINES = text(
    "INSERT INTO reporting_line (flow_id, line_index, iuv, iur, transfer_index, amount, outcome, pay_date,"
    " state, anomalies, collection_id, position_id)"
    " SELECT :flow_id, * FROM unnest(CAST(:line_index AS integer[]), CAST(:iuv AS varchar[]),"
    " CAST(:iur AS varchar[]), CAST(:transfer_index AS integer[]), CAST(:amount AS numeric[]),"
    " CAST(:outcome AS integer[]), CAST(:pay_date AS date[]), CAST(:state AS varchar[]),"
    " CAST(:anomalies AS text[]), CAST(:collection_id AS integer[]), CAST(:position_id AS integer[]))"
    " RETURNING id, line_index"
)
_PG_LINK_COLLECTIONS = text(
    "UPDATE collection SET iur = v.iur, flow_line_id = v.lid"
    " FROM unnest(CAST(:cids AS integer[]), CAST(:lids AS integer[]), CAST(:iurs AS varchar[]))"
    " AS v(cid, lid, iur)"
    " WHERE collection.id = v.cid"
)
_LINE_COLUMNS = (
    "line_index",
    "iuv",
    "iur",
    "transfer_index",
    "amount",
    "outcome",
    "pay_date",
    "state",
    "anomalies",
    "collection_id",
    "position_id",
)


def _insert_lines(session: Session, *, flow_id: int, rows: list[dict[str, Any]]) -> dict[int, int]:
    """Insert a batch of lines; their ids by line index."""
    if _is_pg(session):
        # One statement with one array per column: no per-row placeholders to build, parse or plan.
        params: dict[str, Any] = {name: [r[name] for r in rows] for name in _LINE_COLUMNS}
        params["anomalies"] = [
            None if a is None else json.dumps(a, sort_keys=True, ensure_ascii=False)
            for a in params["anomalies"]
        ]
        params["flow_id"] = flow_id
        found = session.execute(_PG_INSERT_LINES, params).all()
    else:
        table = ReportingLine.__table__  # type: ignore[attr-defined]
        found = session.execute(
            insert(table).returning(table.c.id, table.c.line_index), [r | {"flow_id": flow_id} for r in rows]
        ).all()
    return {int(index): int(line_id) for line_id, index in found}


def _link_collections(session: Session, *, links: list[tuple[int, int, str]]) -> None:
    """Point each collection at the line reporting it, with its IUR: (collection, line, IUR) triples."""
    if not links:
        return
    if _is_pg(session):
        session.execute(
            _PG_LINK_COLLECTIONS,
            {
                "cids": [c for c, _l, _i in links],
                "lids": [ln for _c, ln, _i in links],
                "iurs": [i for _c, _l, i in links],
            },
        )
        return
    table = Collection.__table__  # type: ignore[attr-defined]
    session.execute(
        update(table)
        .where(table.c.id == bindparam("cid"))
        .values(iur=bindparam("new_iur"), flow_line_id=bindparam("lid")),
        [{"cid": cid, "new_iur": iur, "lid": lid} for cid, lid, iur in links],
    )


def _line_row(line: FlowLine, decision: Any) -> dict[str, Any]:
    return {
        "line_index": line.index,
        "iuv": line.iuv,
        "iur": line.iur,
        "transfer_index": line.transfer_index,
        "amount": line.amount,
        "outcome": line.outcome if line.outcome is not None else UNKNOWN_OUTCOME_VALUE,
        "pay_date": line.pay_date,
        "state": decision.state.value,
        "anomalies": [a.as_json() for a in decision.anomalies] or None,
        "collection_id": decision.collection_id,
        "position_id": decision.position_id,
    }


def ingest_flow(
    session: Session,
    *,
    scope: CreditorScope,
    header: FlowHeader,
    batches: Iterable[list[FlowLine]],
    revision: int,
    source: str,
    published_at: datetime | None = None,
) -> IngestResult:
    """Store one revision of a flow with its lines, checked and linked (the caller commits)."""
    stored = session.exec(
        select(ReportingFlow.revision).where(
            ReportingFlow.id_dominio == scope.id_dominio,
            ReportingFlow.id_flusso == header.id_flusso,
            ReportingFlow.psp_id == header.psp_id,
        )
    ).all()
    action = revision_action(revision=revision, stored=set(stored))
    if action == SKIP:
        return IngestResult(flow_id=None, action=SKIP, psp_id=header.psp_id)
    flow_id = _claim_flow_row(
        session,
        row={
            "id_dominio": scope.id_dominio,
            "id_flusso": header.id_flusso,
            "id_flusso_lower": header.id_flusso.lower(),
            "psp_id": header.psp_id,
            "psp_name": (header.psp_name or None) and header.psp_name[:140],
            "revision": revision,
            "flow_at": header.flow_at,
            "settlement_ref": header.settlement_ref,
            "settlement_date": header.settlement_date,
            "bic": header.bic and header.bic[:11],
            "total_count": header.total_count,
            "total_amount": header.total_amount,
            "state": (FlowState.OBSOLETA if action == OBSOLETE else FlowState.ACCETTATA).value,
            "source": source,
            "published_at": published_at,
            "downloaded_at": utcnow(),
        },
    )
    if flow_id is None:
        return IngestResult(flow_id=None, action=SKIP, psp_id=header.psp_id)
    result = IngestResult(flow_id=flow_id, action=action, psp_id=header.psp_id)
    if action == CURRENT:
        result.obsoleted = obsolete_older(
            session,
            id_dominio=scope.id_dominio,
            id_flusso=header.id_flusso,
            psp_id=header.psp_id,
            revision=revision,
        )
    checker = FlowChecker(header, expected_ec=scope.id_dominio)
    link = action == CURRENT and checker.receiver is None
    for batch in batches:
        anomalies = [checker.line_anomalies(line) for line in batch]
        if link:
            candidates, positions = _link_context(
                session, id_dominio=scope.id_dominio, iuvs={ln.iuv for ln in batch}
            )
        else:
            candidates, positions = {}, {}
        rows: list[dict[str, Any]] = []
        claims: list[tuple[int, int, str]] = []
        for line, found in zip(batch, anomalies, strict=True):
            if link:
                options = candidates.get((line.iuv, line.transfer_index), [])
                decision = decide_line(
                    line,
                    candidates=options,
                    position_id=positions.get(line.iuv),
                    in_space=scope.owns(line.iuv),
                    psp_id=header.psp_id,
                    anomalies=found,
                )
                if decision.claim and decision.collection_id is not None:
                    chosen = next(c for c in options if c.id == decision.collection_id)
                    chosen.linked, chosen.iur = True, line.iur
                    claims.append((decision.collection_id, line.index, line.iur))
            else:
                decision = _unlinked(line, found)
            rows.append(_line_row(line, decision))
            result.states[decision.state.value] += 1
            for anomaly in decision.anomalies:
                result.anomalies[anomaly.code] += 1
            result.lines += 1
            result.amount += line.amount
        line_ids = _insert_lines(session, flow_id=flow_id, rows=rows)
        _link_collections(session, links=[(cid, line_ids[index], iur) for cid, index, iur in claims])
    result.flow_anomalies = checker.finish()
    result.state = (FlowState.OBSOLETA if action == OBSOLETE else flow_state(result.flow_anomalies)).value
    summary: dict[str, Any] | None = None
    if result.flow_anomalies or result.anomalies:
        summary = {
            "flusso": [a.as_json() for a in result.flow_anomalies],
            "righe": dict(sorted(result.anomalies.items())),
        }
    session.execute(
        update(ReportingFlow)
        .where(col(ReportingFlow.id) == flow_id)
        .values(state=result.state, anomalies=summary)
    )
    return result


def store_payload(session: Session, *, flow_id: int, payload: str) -> None:
    """Keep a flow's document as received (bound at execution, never held by a cached statement)."""
    session.execute(
        update(ReportingFlow).where(col(ReportingFlow.id) == flow_id).values(payload=bindparam("payload")),
        {"payload": payload},
    )


def decode_document(data: bytes) -> str:
    """An FR document as text: UTF-8 (the Node's), else ISO-8859-1 as some PSPs write."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def ingest_xml(
    session: Session,
    *,
    scope: CreditorScope,
    stream: IO[bytes],
    revision: int,
    published_at: datetime | None = None,
    batch_size: int = 2000,
) -> IngestResult:
    """Store a FlussoRiversamento read from a seekable stream: its lines while parsing, then the document.

    The document is read back only once the lines are stored, so the parsed tree and the stored copy never
    coexist in memory. FlowFormatError propagates (the caller rolls back and refuses the flow).
    """
    reader = read_flow(stream, batch_size=batch_size)
    result = ingest_flow(
        session,
        scope=scope,
        header=reader.header,
        batches=reader.batches(),
        revision=revision,
        source="SOAP",
        published_at=published_at,
    )
    if result.flow_id is not None:
        stream.seek(0)
        store_payload(session, flow_id=result.flow_id, payload=decode_document(stream.read()))
    return result


def _unlinked(line: FlowLine, found: list[Anomaly]) -> LineDecision:
    # An older revision, or a flow for another EC: kept for the record, never linked.
    return LineDecision(LineState.ANOMALA if found else LineState.UNKNOWN, anomalies=tuple(found))


# --- queues for the next stages -------------------------------------------------------------------


def lines_awaiting_receipt(
    session: Session, *, id_dominio: str | None = None, limit: int = 1000
) -> list[ReportingLine]:
    """Live lines of known positions whose receipt we lack (outcomes 0 and 4: a receipt exists at pagoPA)."""
    stmt = (
        select(ReportingLine)
        .join(ReportingFlow, col(ReportingFlow.id) == col(ReportingLine.flow_id))
        .where(
            ReportingLine.state == LineState.NO_RECEIPT.value,
            col(ReportingLine.outcome).in_([0, 4]),
            ReportingFlow.state != FlowState.OBSOLETA.value,
        )
    )
    if id_dominio is not None:
        stmt = stmt.where(ReportingFlow.id_dominio == id_dominio)
    return list(session.exec(stmt.order_by(col(ReportingLine.id)).limit(limit)).all())


# --- reads for the API ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowFilter:
    """Filters of the flow list (GovPay Ragioneria names in the API)."""

    id_dominio: str | None = None
    data_da: date | None = None
    data_a: date | None = None
    stato: str | None = None
    iuv: str | None = None
    id_flusso: str | None = None
    escludi_obsoleti: bool = False




def list_flows(
    session: Session, *, filters: FlowFilter, allowed_creditors: set[str] | None, page: int, size: int
) -> tuple[int, list[ReportingFlow]]:
    """The flows matching the filters among the ECs the caller may see, newest first, and their count."""
    conditions: list[Any] = []
    if allowed_creditors is not None:
        conditions.append(col(ReportingFlow.id_dominio).in_(sorted(allowed_creditors)))
    if filters.id_dominio:
        conditions.append(ReportingFlow.id_dominio == filters.id_dominio)
    if filters.id_flusso:
        conditions.append(ReportingFlow.id_flusso_lower == filters.id_flusso.lower())
    if filters.stato:
        conditions.append(ReportingFlow.state == filters.stato)
    if filters.escludi_obsoleti:
        conditions.append(ReportingFlow.state != FlowState.OBSOLETA.value)
    if filters.data_da:
        conditions.append(col(ReportingFlow.flow_at) >= _day_start(filters.data_da))
    if filters.data_a:
        conditions.append(col(ReportingFlow.flow_at) < _day_start(filters.data_a + timedelta(days=1)))
    if filters.iuv:
        conditions.append(
            exists().where(
                col(ReportingLine.flow_id) == col(ReportingFlow.id), col(ReportingLine.iuv) == filters.iuv
            )
        )
    total = session.exec(select(func.count()).select_from(ReportingFlow).where(*conditions)).one()
    rows = session.exec(
        select(ReportingFlow)
        .where(*conditions)
        .order_by(col(ReportingFlow.flow_at).desc(), col(ReportingFlow.id).desc())
        .offset((page - 1) * size)
        .limit(size)
    ).all()
    return int(total), list(rows)


def find_flow(
    session: Session, *, id_dominio: str, id_flusso: str, revision: int | None = None
) -> ReportingFlow | None:
    """A stored flow by EC and id: the revision asked for, else the live one (the newest)."""
    stmt = select(ReportingFlow).where(
        ReportingFlow.id_dominio == id_dominio, ReportingFlow.id_flusso_lower == id_flusso.lower()
    )
    if revision is not None:
        stmt = stmt.where(ReportingFlow.revision == revision)
    return session.exec(
        stmt.order_by(col(ReportingFlow.revision).desc(), col(ReportingFlow.id).desc())
    ).first()


def iter_lines(session: Session, *, flow_id: int, batch: int = 2000) -> Iterator[list[ReportingLine]]:
    """A flow's lines in order, a batch at a time (keyset paging: memory stays flat)."""
    last = 0
    while True:
        rows = list(
            session.exec(
                select(ReportingLine)
                .where(ReportingLine.flow_id == flow_id, ReportingLine.line_index > last)
                .order_by(col(ReportingLine.line_index))
                .limit(batch)
            ).all()
        )
        if not rows:
            return
        yield rows
        last = rows[-1].line_index


def line_details(
    session: Session, *, lines: list[ReportingLine]
) -> tuple[dict[int, Collection], dict[int, Receipt], dict[int, Position]]:
    """The collections, receipts and positions the lines point at (by id)."""
    collection_ids = {ln.collection_id for ln in lines if ln.collection_id is not None}
    collections = (
        {
            c.id: c
            for c in session.exec(select(Collection).where(col(Collection.id).in_(collection_ids))).all()
        }
        if collection_ids
        else {}
    )
    receipt_ids = {c.receipt_pk for c in collections.values() if c.receipt_pk is not None}
    receipts = (
        {r.id: r for r in session.exec(select(Receipt).where(col(Receipt.id).in_(receipt_ids))).all()}
        if receipt_ids
        else {}
    )
    position_ids = {ln.position_id for ln in lines if ln.position_id is not None}
    positions = (
        {p.id: p for p in session.exec(select(Position).where(col(Position.id).in_(position_ids))).all()}
        if position_ids
        else {}
    )
    return collections, receipts, positions  # type: ignore[return-value]
