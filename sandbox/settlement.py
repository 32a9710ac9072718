"""Settlement: the PSPs report the day's payments (one FR per PSP per EC) and credit the ECs' treasury.

``POST /sandbox/settle {date, seed?, reissue?, noise?, formats?, regulationDate?, publishedAt?,
withoutReceipt?}`` takes the unsettled transfers of ``state.transfers`` paid on ``date`` (plus the payments
``withoutReceipt`` names: reported with outcome 8 or 9, no receipt ever issued), builds one flow per (PSP, EC)
with the outcome codes as they happened, publishes it (FdR REST and the legacy SOAP list), marks the transfers
settled and writes each EC's account journal into its ``treasury_dir``. Conventions:

- flow id ``<date><psp_id>-S<6 digits from (seed, date, psp)><3-digit progressive>`` (cut to 35 characters);
- the PSP credits the EC the next day: ``dataRegolamento``, the journal day and the value dates are
  ``regulationDate`` (default ``date`` + 1); ``dataOraFlusso`` is that day at a seeded time;
- ``published`` is the wall-clock time of the settle call (or ``publishedAt``), so FdR listings with
  ``publishedGt`` work on fresh data; it is not part of the flow XML nor of the journals;
- a seeded settle is a pure function of (seed, date, transfers, earlier settles since reset): same flows,
  same journal bytes. Noise draws from generators seeded by (seed, date, EC, kind), never from the shared
  ``state.rng``.

Noise (``noise`` object; each switch independent, applied per EC journal): ``unrelated`` (count of
non-pagoPA credits), ``reversal`` (a debit reversing an earlier credit), ``split`` (a flow paid in two
credits), ``integrative`` (a flow paid short, completed by a ``TXT/1`` transfer), ``remittance`` (``wrapped``,
``upper``, ``truncated``: one flow's causale mangled that way), ``early`` (a flow's money is in today's
journal, the flow is published at the next settle), ``txt`` (flow credits take the ``TXT/0/URI`` form at
random), ``mismatch`` (a flow credited with another amount than its total: ``true`` for a seeded
difference, or the signed difference), ``unknown`` (count of credits naming a flow id no PSP reported).
``reversal`` is ``true`` (a random earlier credit of each EC) or a flow id (every credit that paid that flow,
earlier or today).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox import gpd
from sandbox.builders.reporting import FlowPayment, FlowSpec, FlowSpecError, build_flow_xml, flow_totals
from sandbox.builders.treasury import (
    Credit,
    JournalFormat,
    JournalSpecError,
    build_journal,
    journal_filename,
)
from sandbox.psp import DEFAULT_PSP
from sandbox.state import PaidTransfer, SandboxState, get_state

logger = logging.getLogger(__name__)

router = APIRouter()

CENT = Decimal("0.01")
ID_FLUSSO = re.compile(r"[a-zA-Z0-9\-_]{1,35}")
URI_PREFIX = "/PUR/LGPE-RIVERSAMENTO/URI/"
MAX_ID_FLUSSO = 35
WRAP_AT = {JournalFormat.OPI_1_8: 65, JournalFormat.CAMT053: 140, JournalFormat.CBI_RH: 104}
UNRELATED_TEXTS = (
    ("TRASFERIMENTO FONDI L.R. 12/2024 ACCONTO", "REGIONE DEMO SERVIZIO FINANZIARIO"),
    ("RIMBORSO SPESE NOTIFICA PRATICA 2024/118", "STUDIO LEGALE ASSOCIATO"),
    ("CANONE LOCAZIONE IMMOBILE VIA ROMA 1 RATA 3", "BIANCHI SRL"),
    ("CONTRIBUTO STATALE FONDO SOLIDARIETA COMUNALE", "MINISTERO DELL'INTERNO"),
    ("VERSAMENTO DEPOSITO CAUZIONALE GARA 45/2024", "EDILIZIA ROSSI SPA"),
    ("INTERESSI ATTIVI II TRIMESTRE", "BANCA TESORIERA"),
)
RemittanceNoise = Literal["wrapped", "upper", "truncated"]


# ----------------------------------------------------------------------------------------------------
# State


@dataclass
class PublishedFlow:
    """One revision of one flow as the Node holds it."""

    spec: FlowSpec
    xml: bytes
    published: datetime | None = None  # None while the flow is built but not yet published

    @property
    def id_flusso(self) -> str:
        """The flow id (IUF)."""
        return self.spec.id_flusso

    @property
    def revision(self) -> int:
        """The revision (1 for the first issue)."""
        return self.spec.revision

    @property
    def ec(self) -> str:
        """The receiving EC's fiscal code."""
        return self.spec.ec_fiscal_code

    @property
    def psp_id(self) -> str:
        """The reporting PSP."""
        return self.spec.psp_id

    @property
    def flow_date(self) -> datetime:
        """dataOraFlusso (aware)."""
        return self.spec.flow_datetime

    @property
    def total(self) -> Decimal:
        """Header total."""
        return flow_totals(self.spec)[1]

    @property
    def count(self) -> int:
        """Header count."""
        return flow_totals(self.spec)[0]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for the control API."""
        return {
            "idFlusso": self.id_flusso,
            "revision": self.revision,
            "psp": self.psp_id,
            "ec": self.ec,
            "count": self.count,
            "total": f"{self.total:.2f}",
            "published": self.published is not None,
            "publishedAt": self.published.isoformat() if self.published else None,
        }


@dataclass
class JournalFile:
    """A treasury journal the sandbox wrote."""

    ec: str
    fmt: str
    day: date
    sequence: int
    path: Path
    credits: list[Credit]
    sha256: str


@dataclass
class ReportingState:
    """The reporting part of the sandbox state (``SandboxState.reporting``)."""

    revisions: dict[tuple[str, str, str], list[PublishedFlow]] = field(default_factory=dict)
    pending: list[PublishedFlow] = field(default_factory=list)
    progressives: dict[tuple[date, str], int] = field(default_factory=dict)
    journal_sequences: dict[tuple[str, date, str], int] = field(default_factory=dict)
    balances: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    credit_history: dict[str, list[Credit]] = field(default_factory=dict)
    # (EC, flow id) -> the credits that paid that flow (one copy per EC whatever the formats), for reversals
    flow_credits: dict[tuple[str, str], list[Credit]] = field(default_factory=dict)
    # (EC, esercizio) -> the last OPI numero_documento: the treasury numbers its sospesi through the year
    document_numbers: dict[tuple[str, int], int] = field(default_factory=dict)
    journals: list[JournalFile] = field(default_factory=list)

    def latest_flows(self, *, ecs: set[str] | None = None, psp_id: str | None = None) -> list[PublishedFlow]:
        """The newest published revision of every flow, oldest publication first."""
        latest = []
        for (ec, psp, _id), revisions in self.revisions.items():
            if (ecs is not None and ec not in ecs) or (psp_id and psp != psp_id):
                continue
            published = [r for r in revisions if r.published is not None]
            if published:
                latest.append(max(published, key=lambda r: r.revision))
        return sorted(latest, key=lambda f: (f.published, f.id_flusso))  # type: ignore[arg-type, return-value]

    def find(self, *, ec: str, id_flusso: str, psp_id: str, revision: int) -> PublishedFlow | None:
        """One published revision, or None."""
        for flow in self.revisions.get((ec, psp_id, id_flusso), []):
            if flow.revision == revision and flow.published is not None:
                return flow
        return None

    def knows_psp(self, psp_id: str) -> bool:
        """Whether some flow was reported by this PSP."""
        return any(psp == psp_id for (_ec, psp, _id) in self.revisions)


def reporting_state(state: SandboxState) -> ReportingState:
    """The reporting part of the state, created on first use (reset clears it)."""
    with state.lock:
        if state.reporting is None:
            state.reporting = ReportingState()
        return state.reporting


# ----------------------------------------------------------------------------------------------------
# Request


class NoiseOptions(BaseModel):
    """Realistic disorder in the treasury journals; every switch off by default."""

    model_config = ConfigDict(extra="forbid")

    unrelated: int = Field(default=0, ge=0, le=100)
    reversal: bool | str = False
    split: bool = False
    integrative: bool = False
    remittance: list[RemittanceNoise] = Field(default_factory=list)
    early: bool = False
    txt: bool = False
    mismatch: bool | Decimal = False
    unknown: int = Field(default=0, ge=0, le=100)

    @field_validator("unrelated", "unknown", mode="before")
    @classmethod
    def _bool_count(cls, value: Any) -> Any:
        return int(value) if isinstance(value, bool) else value

    @field_validator("reversal", mode="before")
    @classmethod
    def _flow_or_bool(cls, value: Any) -> Any:
        if isinstance(value, str) and not ID_FLUSSO.fullmatch(value):
            raise ValueError("true, false or a flow id")
        return value

    @field_validator("mismatch", mode="before")
    @classmethod
    def _difference(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return bool(value)
        try:
            difference = Decimal(str(value))
            cents = difference.quantize(CENT) if difference.is_finite() else None
        except ArithmeticError as exc:
            raise ValueError("true, false or a signed amount such as \"-1.50\"") from exc
        if cents is None or cents != difference or cents == 0:
            raise ValueError("a non-zero amount with at most two decimals")
        return cents

    @field_validator("remittance", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is True:
            return ["wrapped", "upper", "truncated"]
        if value in (None, False):
            return []
        return [value] if isinstance(value, str) else value


class Reissue(BaseModel):
    """A flow to re-issue as a new revision, optionally without some IUVs."""

    model_config = ConfigDict(populate_by_name=True)

    id_flusso: str = Field(alias="idFlusso")
    drop_iuvs: list[str] = Field(default_factory=list, alias="dropIuvs")


class PaymentWithoutReceipt(BaseModel):
    """A payment a PSP reports with no receipt behind it: outcome 9 (NO_RPT) or 8 (STAND_IN_NO_RPT)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    fiscal_code: str = Field(alias="fiscalCode", pattern=r"^[0-9]{11}$")
    iuv: str = Field(min_length=1, max_length=35)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    outcome: Literal[8, 9] = 9
    psp: str | None = Field(default=None, min_length=1, max_length=35)
    transfer_index: int = Field(default=1, ge=1, le=5, alias="transferIndex")
    iur: str | None = Field(default=None, min_length=1, max_length=35)


class SettleRequest(BaseModel):
    """What to settle and how."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    day: date = Field(alias="date")
    seed: int | None = None
    reissue: list[Reissue | str] = Field(default_factory=list)
    noise: NoiseOptions = Field(default_factory=NoiseOptions)
    formats: str | list[str] | dict[str, str | list[str]] | None = None
    regulation_date: date | None = Field(default=None, alias="regulationDate")
    published_at: datetime | None = Field(default=None, alias="publishedAt")
    without_receipt: list[PaymentWithoutReceipt] = Field(default_factory=list, alias="withoutReceipt")


class SettlementError(ValueError):
    """A settle request that cannot be carried out; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        self.status = status
        super().__init__(message)


# ----------------------------------------------------------------------------------------------------
# Building


def _seeded(seed: int, *parts: object) -> random.Random:
    # Simulation data, not secrets: a seeded, reproducible generator is the point.
    return random.Random("|".join(str(p) for p in (seed, *parts)))  # noqa: S311


def make_id_flusso(*, day: date, psp_id: str, seed: int, progressive: int) -> str:
    """The flow id of the ``progressive``-th flow of a PSP on a day."""
    tag = _seeded(seed, day, psp_id, "iuf").randrange(10**6)
    return _id_flusso(day, psp_id, f"S{tag:06d}{progressive:03d}")


def _id_flusso(day: date, psp_id: str, suffix: str) -> str:
    prefix = f"{day.isoformat()}{psp_id}-"
    room = MAX_ID_FLUSSO - len(prefix)
    if room < 1:
        raise SettlementError(f"PSP id {psp_id!r} too long for a flow id")
    return prefix + suffix[-room:]


def _psp_details(state: SandboxState, psp_id: str) -> tuple[str, str | None]:
    psp = next((p for p in state.psps if p.psp_id == psp_id), None)
    if psp is None:
        return (f"PSP {psp_id}")[:70], None
    name = psp.name if len(psp.name) >= 3 else f"PSP {psp.name}"
    return name[:70], psp.bic or None


def _trn(rng: random.Random, day: date, n: int) -> str:
    return f"{rng.randrange(10**10):010d}{day:%y%m%d}{n:06d}IT"


def _build_flows(
    state: SandboxState,
    progressives: dict[tuple[date, str], int],
    transfers: list[PaidTransfer],
    *,
    day: date,
    regulation: date,
    seed: int,
) -> list[tuple[PublishedFlow, list[PaidTransfer]]]:
    """One flow per (PSP, EC) of ``transfers``; advances ``progressives`` (the caller's copy)."""
    groups: dict[tuple[str, str], list[PaidTransfer]] = defaultdict(list)
    for t in transfers:
        groups[(t.psp_id, t.ec_fiscal_code)].append(t)
    built = []
    for (psp_id, ec), lines in sorted(groups.items()):
        lines.sort(key=lambda t: (t.iuv, t.transfer_index, t.iur))
        key = (day, psp_id)
        progressives[key] = progressives.get(key, 0) + 1
        id_flusso = make_id_flusso(day=day, psp_id=psp_id, seed=seed, progressive=progressives[key])
        rng = _seeded(seed, day, id_flusso, "flow")
        flow_dt = datetime.combine(
            regulation, time(rng.randrange(4, 10), rng.randrange(60), rng.randrange(60)), UTC
        )
        psp_name, bic = _psp_details(state, psp_id)
        creditor = state.creditors.get(ec)
        spec = FlowSpec(
            id_flusso=id_flusso,
            revision=1,
            flow_datetime=flow_dt,
            settlement_ref=_trn(rng, regulation, progressives[key]),
            settlement_date=regulation,
            psp_id=psp_id,
            psp_name=psp_name,
            bic=bic,
            ec_fiscal_code=ec,
            ec_name=(creditor.name if creditor else ec)[:140] or ec,
            payments=tuple(
                FlowPayment(
                    iuv=t.iuv,
                    iur=t.iur,
                    transfer_index=t.transfer_index,
                    amount=Decimal(t.amount).quantize(CENT),
                    outcome=t.outcome,
                    pay_date=t.pay_date,
                )
                for t in lines
            ),
        )
        try:
            xml = build_flow_xml(spec)
        except FlowSpecError as exc:
            raise SettlementError(str(exc)) from exc
        built.append((PublishedFlow(spec=spec, xml=xml), lines))
    return built


def _plan_reissue(rep: ReportingState, item: Reissue) -> tuple[list[PublishedFlow], PublishedFlow]:
    """The next revision of a published flow (not yet stored) and the revision list it joins."""
    matches = [revs for (_ec, _psp, fid), revs in rep.revisions.items() if fid == item.id_flusso]
    if not matches:
        pending = any(f.id_flusso == item.id_flusso for f in rep.pending)
        raise SettlementError(
            f"flow {item.id_flusso} {'not published yet' if pending else 'unknown'}",
            status=409 if pending else 404,
        )
    if len(matches) > 1:
        raise SettlementError(f"flow id {item.id_flusso} is used by several ECs/PSPs", status=409)
    revisions = matches[0]
    last = max(revisions, key=lambda r: r.revision)
    dropped = set(item.drop_iuvs)
    payments = tuple(p for p in last.spec.payments if p.iuv not in dropped)
    if not payments:
        raise SettlementError(f"re-issue of {item.id_flusso} would leave no payments")
    spec = dataclasses.replace(
        last.spec,
        revision=last.revision + 1,
        flow_datetime=last.flow_date + timedelta(hours=1),
        payments=payments,
        declared_count=None,
        declared_total=None,
    )
    try:
        return revisions, PublishedFlow(spec=spec, xml=build_flow_xml(spec))
    except FlowSpecError as exc:
        raise SettlementError(str(exc)) from exc


# ----------------------------------------------------------------------------------------------------
# Treasury credits and noise


@dataclass
class _PlannedCredit:
    amount: Decimal
    remittance: str
    ordering_party: str
    kind: str
    id_flusso: str | None = None
    reversal: bool = False


def _canonical(id_flusso: str, *, txt: int | None = None) -> str:
    if txt is None:
        return f"{URI_PREFIX}{id_flusso}"
    return f"/PUR/LGPE-RIVERSAMENTO/TXT/{txt}/URI/{id_flusso}"


def _wrapped(canonical: str, *, width: int, joiner: str, party: str) -> str:
    """A remittance whose flow id straddles the bank's line/record boundary at ``width``."""
    # The boundary falls in the middle of the flow id; bank text in front pushes it there.
    id_length = len(canonical) - canonical.rfind("/") - 1
    cut = len(canonical) - max(4, id_length // 2)
    filler = f"BONIFICO SEPA DA {party} PER SERVIZIO PAGOPA RIVERSAMENTO INCASSI "
    room = max(width - cut, 0)
    lead = (filler * (room // len(filler) + 1))[:room]
    text = (lead[:-1] + " " if lead else "") + canonical
    return text[:width] + joiner + text[width:] if joiner else text


def _mangle(canonical: str, how: str, *, fmt: JournalFormat, rng: random.Random, party: str) -> str:
    if how == "upper":
        # Treasury systems change case; when upper-casing changes nothing, they lower-case (same lesson).
        return canonical.upper() if canonical.upper() != canonical else canonical.lower()
    if how == "truncated":
        return canonical[: len(canonical) - rng.randrange(3, 7)]
    # wrapped: split across camt Ustrd / CBI RI1-RI2 pieces; in the OPI causale the line is joined by a space.
    return _wrapped(
        canonical, width=WRAP_AT[fmt], joiner=" " if fmt == JournalFormat.OPI_1_8 else "", party=party
    )


def _split_amount(total: Decimal, rng: random.Random, *, low: float, high: float) -> Decimal:
    part = (total * Decimal(str(round(rng.uniform(low, high), 4)))).quantize(CENT, rounding=ROUND_DOWN)
    return min(max(part, CENT), total - CENT)


def _plan_credits(
    state: SandboxState,
    rep: ReportingState,
    *,
    ec: str,
    flows: list[PublishedFlow],
    noise: NoiseOptions,
    seed: int,
    day: date,
    fmt: JournalFormat,
) -> list[_PlannedCredit]:
    """The movements of one EC's journal: one credit per flow, then the requested noise."""
    ordered = sorted(flows, key=lambda f: f.id_flusso)
    chosen: dict[str, PublishedFlow] = {}
    taken: set[str] = set()
    kinds = [k for k, on in (("split", noise.split), ("integrative", noise.integrative)) if on]
    # "upper" chooses first so it can take a flow whose id has lower-case letters.
    kinds += [f"remittance:{how}" for how in sorted(set(noise.remittance), key=lambda h: h != "upper")]
    # "mismatch" chooses last, so switching it on leaves the other choices as they were.
    kinds += ["mismatch"] if noise.mismatch is not False else []
    for kind in kinds:
        rng = _seeded(seed, day, ec, kind)
        candidates = [
            f
            for f in ordered
            if f.id_flusso not in taken
            and (kind not in ("split", "integrative") or f.total >= Decimal("0.02"))
        ]
        if kind == "remittance:upper":
            # Prefer a flow whose id has lower-case letters, where the change is visible on the id itself.
            candidates = [f for f in candidates if f.id_flusso != f.id_flusso.upper()] or candidates
        if candidates:
            flow = rng.choice(candidates)
            chosen[kind] = flow
            taken.add(flow.id_flusso)
    txt_rng = _seeded(seed, day, ec, "txt")
    planned: list[_PlannedCredit] = []
    for flow in ordered:
        psp_name, _bic = _psp_details(state, flow.psp_id)
        party = f"{psp_name} SERVIZIO PAGOPA"[:140].upper()
        use_txt = noise.txt and txt_rng.random() < 0.5
        canonical = _canonical(flow.id_flusso, txt=0 if use_txt else None)
        if chosen.get("split") is flow:
            first = _split_amount(flow.total, _seeded(seed, day, ec, "split-amount"), low=0.3, high=0.7)
            planned.append(_PlannedCredit(first, canonical, party, "split", flow.id_flusso))
            planned.append(_PlannedCredit(flow.total - first, canonical, party, "split", flow.id_flusso))
            continue
        if chosen.get("integrative") is flow:
            short = _split_amount(
                flow.total, _seeded(seed, day, ec, "integrative-amount"), low=0.75, high=0.95
            )
            planned.append(
                _PlannedCredit(short, _canonical(flow.id_flusso, txt=0), party, "integrative", flow.id_flusso)
            )
            planned.append(
                _PlannedCredit(
                    flow.total - short,
                    _canonical(flow.id_flusso, txt=1),
                    party,
                    "integrative",
                    flow.id_flusso,
                )
            )
            continue
        if chosen.get("mismatch") is flow:
            rng = _seeded(seed, day, ec, "mismatch-amount")
            amount = flow.total + _difference(noise.mismatch, flow.total, rng)
            if amount <= 0:
                raise SettlementError(
                    f"mismatch {noise.mismatch} would credit {amount} for flow {flow.id_flusso} "
                    f"(total {flow.total})"
                )
            planned.append(_PlannedCredit(amount, canonical, party, "mismatch", flow.id_flusso))
            continue
        kind = "flow"
        for how in noise.remittance:
            if chosen.get(f"remittance:{how}") is flow:
                canonical = _mangle(
                    canonical, how, fmt=fmt, rng=_seeded(seed, day, ec, f"mangle-{how}"), party=party
                )
                kind = how
        planned.append(_PlannedCredit(flow.total, canonical, party, kind, flow.id_flusso))
    if noise.unrelated:
        rng = _seeded(seed, day, ec, "unrelated")
        for _ in range(noise.unrelated):
            text, party = rng.choice(UNRELATED_TEXTS)
            amount = Decimal(rng.randrange(1000, 500000)) / 100
            planned.append(_PlannedCredit(amount.quantize(CENT), text, party, "unrelated"))
    if noise.unknown:
        rng = _seeded(seed, day, ec, "unknown")
        psp = state.psps[0] if state.psps else DEFAULT_PSP
        party = f"{_psp_details(state, psp.psp_id)[0]} SERVIZIO PAGOPA"[:140].upper()
        for _ in range(noise.unknown):
            # "U" where real ids have "S": no PSP ever reports this flow
            id_flusso = _id_flusso(day - timedelta(days=1), psp.psp_id, f"U{rng.randrange(10**9):09d}")
            amount = (Decimal(rng.randrange(1000, 50000)) / 100).quantize(CENT)
            planned.append(_PlannedCredit(amount, _canonical(id_flusso), party, "unknown", id_flusso))
    if isinstance(noise.reversal, str):
        # every credit that paid the named flow, in an earlier journal of this EC or in this one
        target = noise.reversal
        paid = [(c.remittance, c.amount, c.ordering_party) for c in rep.flow_credits.get((ec, target), [])]
        paid += [(p.remittance, p.amount, p.ordering_party) for p in planned
                 if p.id_flusso == target and not p.reversal]
        for text, amount, party in paid:
            planned.append(_PlannedCredit(amount, f"STORNO {text}"[:208], party, "reversal", target, True))
    elif noise.reversal:
        rng = _seeded(seed, day, ec, "reversal")
        earlier = [c for c in rep.credit_history.get(ec, []) if not c.reversal]
        if earlier:
            original = rng.choice(earlier)
            text, amount, party = original.remittance, original.amount, original.ordering_party
        else:
            today = [p for p in planned if not p.reversal]
            if not today:
                return planned
            pick = rng.choice(today)
            text, amount, party = pick.remittance, pick.amount, pick.ordering_party
        planned.append(_PlannedCredit(amount, f"STORNO {text}"[:208], party, "reversal", reversal=True))
    return planned


def _difference(mismatch: bool | Decimal, total: Decimal, rng: random.Random) -> Decimal:
    """How much a mismatched credit differs from its flow's total: the requested amount, or a seeded one."""
    if isinstance(mismatch, Decimal):
        return mismatch
    cents = rng.randrange(1, 1001)
    sign = rng.choice((-1, 1)) if cents < total / CENT else 1
    return (sign * cents * CENT).quantize(CENT)


def _resolve_formats(request_formats: Any, *, ec: str, default: str) -> list[JournalFormat]:
    value: Any = request_formats
    if isinstance(value, dict):
        value = value.get(ec, default)
    if value is None:
        value = default
    names = [value] if isinstance(value, str) else list(value)
    try:
        return [JournalFormat(n) for n in names]
    except ValueError as exc:
        raise SettlementError(f"unknown treasury format in {names!r} (opi, camt053, cbi)") from exc


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file so a reader never sees it half-written: temp name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class _JournalPlan:
    ec: str
    fmt: JournalFormat
    sequence: int
    path: Path
    data: bytes
    credits: list[Credit]
    planned: list[_PlannedCredit]
    closing: Decimal

    def describe(self) -> dict[str, Any]:
        return {
            "ec": self.ec,
            "format": self.fmt.value,
            "path": str(self.path),
            "file": self.path.name,
            "day": self.credits[0].value_date.isoformat(),
            "sequence": self.sequence,
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "credits": [
                {
                    "amount": f"{c.amount:.2f}",
                    "reversal": c.reversal,
                    "remittance": c.remittance,
                    "kind": p.kind,
                    "idFlusso": p.id_flusso,
                }
                for c, p in zip(self.credits, self.planned, strict=True)
            ],
        }


def _plan_journals(
    state: SandboxState,
    rep: ReportingState,
    *,
    flows_by_ec: dict[str, list[PublishedFlow]],
    request: SettleRequest,
    seed: int,
    regulation: date,
) -> list[_JournalPlan]:
    """Every journal this settlement writes, built in memory (nothing stored or written yet)."""
    plans: list[_JournalPlan] = []
    for ec, creditor in sorted(state.creditors.items()):
        if not creditor.treasury_dir:
            continue
        for fmt in _resolve_formats(request.formats, ec=ec, default=creditor.treasury_format or "opi"):
            planned = _plan_credits(
                state,
                rep,
                ec=ec,
                flows=flows_by_ec.get(ec, []),
                noise=request.noise,
                seed=seed,
                day=regulation,
                fmt=fmt,
            )
            if not planned:
                continue
            ref_rng = _seeded(seed, regulation, ec, "refs")
            numbered = rep.document_numbers.get((ec, regulation.year), 0)
            credits = [
                Credit(
                    amount=p.amount,
                    value_date=regulation,
                    booking_date=regulation,
                    remittance=p.remittance,
                    ordering_party=p.ordering_party,
                    end_to_end_id=None if ref_rng.random() < 0.3 else f"E2E{ref_rng.randrange(10**12):012d}",
                    bank_reference=_trn(ref_rng, regulation, n),
                    bank_movement_id=f"{regulation:%y%m%d}{n:06d}",
                    reversal=p.reversal,
                    document_number=numbered + n,
                )
                for n, p in enumerate(planned, start=1)
            ]
            sequence = rep.journal_sequences.get((ec, regulation, fmt.value), 0) + 1
            opening = rep.balances.get((ec, fmt.value), Decimal("0.00"))
            try:
                data = build_journal(
                    fmt=fmt,
                    account_iban=creditor.iban,
                    ec_fiscal_code=ec,
                    ec_name=creditor.name,
                    day=regulation,
                    sequence=sequence,
                    credits=credits,
                    opening_balance=opening,
                )
            except JournalSpecError as exc:
                raise SettlementError(f"journal of {ec}: {exc}") from exc
            path = Path(creditor.treasury_dir) / journal_filename(
                fmt=fmt, ec_fiscal_code=ec, day=regulation, sequence=sequence
            )
            closing = opening + sum((-c.amount if c.reversal else c.amount for c in credits), Decimal("0.00"))
            plans.append(_JournalPlan(ec, fmt, sequence, path, data, credits, planned, closing))
    return plans


def _commit_journals(rep: ReportingState, plans: list[_JournalPlan], *, regulation: date) -> None:
    """Write the journals (each atomically), then remember sequences, balances and credits."""
    for plan in plans:
        write_atomically(plan.path, plan.data)
    history: dict[str, _JournalPlan] = {}
    for plan in plans:
        rep.journal_sequences[(plan.ec, regulation, plan.fmt.value)] = plan.sequence
        rep.balances[(plan.ec, plan.fmt.value)] = plan.closing
        rep.journals.append(
            JournalFile(
                ec=plan.ec,
                fmt=plan.fmt.value,
                day=regulation,
                sequence=plan.sequence,
                path=plan.path,
                credits=plan.credits,
                sha256=hashlib.sha256(plan.data).hexdigest(),
            )
        )
        history[plan.ec] = plan  # the same movements in every format of one EC: keep one copy
    for ec, plan in history.items():
        rep.credit_history.setdefault(ec, []).extend(plan.credits)
        rep.document_numbers[(ec, regulation.year)] = max(c.document_number or 0 for c in plan.credits)
        for credit, planned in zip(plan.credits, plan.planned, strict=True):
            if planned.id_flusso and not planned.reversal:
                rep.flow_credits.setdefault((ec, planned.id_flusso), []).append(credit)


# ----------------------------------------------------------------------------------------------------
# Settle


def settle(state: SandboxState, request: SettleRequest) -> dict[str, Any]:
    """Carry out one settlement; returns the JSON answer of ``POST /sandbox/settle``.

    Everything is built and checked first; only then are files written and the state changed, so a
    request that fails (unknown re-issue, bad format, a transfer no flow can carry) changes nothing.
    """
    seed = state.seed if request.seed is None else request.seed
    regulation = request.regulation_date or request.day + timedelta(days=1)
    published_at = request.published_at or datetime.now(UTC)
    if published_at.tzinfo is None:
        published_at = published_at.replace(tzinfo=UTC)
    with state.lock:
        rep = reporting_state(state)
        reissues = [Reissue(idFlusso=r) if isinstance(r, str) else r for r in request.reissue]
        if len({r.id_flusso for r in reissues}) != len(reissues):
            raise SettlementError("a flow can be re-issued once per settlement")
        planned_reissues = [_plan_reissue(rep, item) for item in reissues]
        progressives = dict(rep.progressives)
        unreceipted = _without_receipt(state, request, seed=seed)
        due = [t for t in state.transfers if not t.settled and t.pay_date == request.day] + unreceipted
        built = _build_flows(state, progressives, due, day=request.day, regulation=regulation, seed=seed)
        flows = [f for f, _ in built]
        target = request.noise.reversal if isinstance(request.noise.reversal, str) else None
        if target and not any(fid == target for _ec, fid in rep.flow_credits) and not any(
            f.id_flusso == target for f in flows
        ):
            raise SettlementError(f"no credit of flow {target} to reverse", status=404)
        deferred: set[str] = set()
        if request.noise.early:
            by_ec: dict[str, list[PublishedFlow]] = defaultdict(list)
            for flow in flows:
                creditor = state.creditors.get(flow.ec)
                if creditor is not None and creditor.treasury_dir:
                    by_ec[flow.ec].append(flow)
            for ec, ec_flows in sorted(by_ec.items()):
                ordered = sorted(ec_flows, key=lambda f: f.id_flusso)
                deferred.add(_seeded(seed, request.day, ec, "early").choice(ordered).id_flusso)
        flows_by_ec: dict[str, list[PublishedFlow]] = defaultdict(list)
        for flow in flows:
            flows_by_ec[flow.ec].append(flow)
        plans = _plan_journals(
            state, rep, flows_by_ec=flows_by_ec, request=request, seed=seed, regulation=regulation
        )
        # Commit: files first (a rerun after a write error rewrites the same names), then the state.
        _commit_journals(rep, plans, regulation=regulation)
        rep.progressives = progressives
        state.transfers.extend(unreceipted)
        state.iurs.update(t.iur for t in unreceipted)
        late, rep.pending = rep.pending, []
        for flow in late:
            flow.published = published_at
            rep.revisions.setdefault((flow.ec, flow.psp_id, flow.id_flusso), []).append(flow)
        for flow, lines in built:
            for t in lines:
                t.settled = True
                # the GPD copy of a reported notice moves towards REPORTED, as pagoPA's does
                gpd.mark_reported(
                    state,
                    fiscal_code=t.ec_fiscal_code,
                    iuv=t.iuv,
                    transfer_index=t.transfer_index,
                    flow_id=flow.id_flusso,
                    reported_at=published_at,
                )
            if flow.id_flusso in deferred:
                rep.pending.append(flow)
            else:
                flow.published = published_at
                rep.revisions.setdefault((flow.ec, flow.psp_id, flow.id_flusso), []).append(flow)
        for revisions, flow in planned_reissues:
            flow.published = published_at
            revisions.append(flow)
    logger.info(
        "settled %s: %d flows (%d deferred), %d re-issued, %d journals",
        request.day,
        len(flows),
        len(deferred),
        len(planned_reissues),
        len(plans),
    )
    return {
        "date": request.day.isoformat(),
        "regulationDate": regulation.isoformat(),
        "seed": seed,
        "flows": [f.summary() | {"deferred": f.id_flusso in deferred} for f in flows],
        "publishedLate": [f.summary() for f in late],
        "reissued": [f.summary() for _revs, f in planned_reissues],
        "journals": [plan.describe() for plan in plans],
        "withoutReceipt": [
            {
                "fiscalCode": t.ec_fiscal_code,
                "iuv": t.iuv,
                "iur": t.iur,
                "transferIndex": t.transfer_index,
                "amount": f"{t.amount:.2f}",
                "outcome": t.outcome,
                "psp": t.psp_id,
            }
            for t in unreceipted
        ],
    }


def _without_receipt(state: SandboxState, request: SettleRequest, *, seed: int) -> list[PaidTransfer]:
    """The ledger entries of the payments reported without a receipt (not stored until the commit)."""
    default_psp = (state.psps[0] if state.psps else DEFAULT_PSP).psp_id
    made = []
    for p in request.without_receipt:
        # one IUR per payment: every transfer of it carries the same one
        iur = p.iur or f"{_seeded(seed, request.day, p.fiscal_code, p.iuv, 'no-rpt').getrandbits(64):016X}"
        made.append(
            PaidTransfer(
                ec_fiscal_code=p.fiscal_code,
                iuv=p.iuv,
                iur=iur,
                transfer_index=p.transfer_index,
                amount=p.amount.quantize(CENT),
                outcome=p.outcome,
                pay_date=request.day,
                psp_id=p.psp or default_psp,
                receipt_id=None,
            )
        )
    return made


@router.post("/sandbox/settle", tags=["sandbox control"])
def settle_route(body: SettleRequest, request: Request) -> JSONResponse:
    """Settle a day: publish the PSPs' reporting flows and write the treasury journals."""
    state = get_state(request)
    try:
        answer = settle(state, body)
    except SettlementError as exc:
        return JSONResponse({"error": "SETTLEMENT_ERROR", "detail": str(exc)}, status_code=exc.status)
    return JSONResponse(answer)


@router.get("/sandbox/settlement", tags=["sandbox control"])
def settlement_view(request: Request) -> JSONResponse:
    """Every flow revision (published or waiting) and every journal written since the last reset."""
    state = get_state(request)
    with state.lock:
        rep = reporting_state(state)
        flows = [r.summary() for revs in rep.revisions.values() for r in revs]
        return JSONResponse(
            {
                "flows": sorted(flows, key=lambda f: (f["idFlusso"], f["revision"])),
                "pending": [f.summary() for f in rep.pending],
                "journals": [
                    {
                        "ec": j.ec,
                        "format": j.fmt,
                        "path": str(j.path),
                        "day": j.day.isoformat(),
                        "sequence": j.sequence,
                        "sha256": j.sha256,
                        "credits": len(j.credits),
                    }
                    for j in rep.journals
                ],
            }
        )


__all__ = [
    "JournalFile",
    "NoiseOptions",
    "PaymentWithoutReceipt",
    "PublishedFlow",
    "ReportingState",
    "SettleRequest",
    "SettlementError",
    "make_id_flusso",
    "reporting_state",
    "router",
    "settle",
    "write_atomically",
]
