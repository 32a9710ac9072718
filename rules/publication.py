"""What to send to GPD or ACA for each queued position, and what a refusal from them means (pure).

A position is queued for publication while ``publication_state`` is PENDING: ``store.positions`` sets it on
every create, update, annulment and restore. For each one ``plan`` picks the first call:

* open (NON_ESEGUITA) and never acknowledged (``published_version == 0``) → CREATE;
* open and acknowledged before → UPDATE (a 404 turns it into a CREATE);
* annulled → INVALIDATE, also when it was never acknowledged: a run may have crashed after GPD took the
  create and before we recorded it, and a live copy of an annulled debt must not stay payable in Stand-In.
  GPD's 404 then just means there is nothing to invalidate;
* no IUV/NAV, a past due date, already paid, a station that publishes nowhere, a disabled EC, or (ACA) a
  position ACA cannot hold → SKIPPED with the reason, no call.

When GPD answers 409 the publisher reads its copy (GET) and ``after_conflict`` decides:

* the copy is open (DRAFT/PUBLISHED/VALID) and holds what we would send → already done (an idempotent
  re-run after a crash), DRAFT → PUBLISH; a different content → UPDATE;
* the copy is paid (PARTIALLY_PAID/PAID/REPORTED) → SKIPPED "paid at pagoPA" (GPD refuses to change it;
  the receipt reaches us through the Node);
* the copy is INVALID or EXPIRED (terminal at GPD): GPD keeps its IUPD *and its IUVs* taken for good.
  A restored position whose IUV is still the one GPD invalidated cannot be published again under that
  notice number: it FAILS with a reason saying a new notice number is needed (our station still answers
  for it; only the Stand-In copy is missing). When the position now carries another IUV, it is created
  under a new IUPD ``<iupd>-R<n>`` and that IUPD is remembered;
* nothing under our IUPD (404): the 409 came from an IUV held by another IUPD → FAILED.

ACA (``paCreatePosition``) is one idempotent upsert per IUV (amount 0 invalidates): 404 on an
invalidation means nothing to invalidate, 409 that the IUV belongs to a GPD position, 422 that ACA's copy
is paid or invalidated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from rules.positions import PAID_STATES

ROME = ZoneInfo("Europe/Rome")
GPD, ACA, NONE = "GPD", "ACA", "NONE"
ANNULLATA = "ANNULLATA"
OPEN_AT_GPD = frozenset({"DRAFT", "PUBLISHED", "VALID"})
PAID_AT_GPD = frozenset({"PARTIALLY_PAID", "PAID", "REPORTED"})
MAX_RESTORES = 9
ACA_IBAN_LENGTH = 27
_RESTORED = re.compile(r"^(?P<base>.+)-R(?P<n>[1-9][0-9]*)$")


class Action(StrEnum):
    """The call to make next (DONE: no call, the result is known)."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    PUBLISH = "PUBLISH"
    INVALIDATE = "INVALIDATE"
    DELETE = "DELETE"
    DONE = "DONE"


class Result(StrEnum):
    """How a position's publication ended in this run."""

    CREATED = "CREATED"  # created (and published) at GPD/ACA
    UPDATED = "UPDATED"  # an existing copy replaced (or a draft published)
    UNCHANGED = "UNCHANGED"  # the copy already held this version (a re-run after a crash)
    INVALIDATED = "INVALIDATED"  # annulled at GPD/ACA, or nothing there to annul
    SKIPPED = "SKIPPED"  # not sent, by rule; settled until the position changes
    FAILED = "FAILED"  # refused by pagoPA; settled until the position changes
    ERROR = "ERROR"  # a technical or credential error: the position stays queued


ACKNOWLEDGED = frozenset({Result.CREATED, Result.UPDATED, Result.UNCHANGED, Result.INVALIDATED})


@dataclass(frozen=True)
class CandidateItem:
    """One voce as publication needs it."""

    index: int
    id_dominio: str
    company_name: str | None
    description: str
    amount: Decimal
    kind: str
    iban: str | None = None
    postal: bool = False
    stamp_type: str | None = None
    stamp_hash: str | None = None
    stamp_province: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A queued position with everything needed to decide and to build the message (no database rows)."""

    id: int
    version: int
    published_version: int
    id_dominio: str
    company_name: str
    office_name: str | None
    target: str  # GPD, ACA or NONE: the publication mode of the EC's station
    key_ref: str | None  # the station's subscription key reference
    creditor_enabled: bool
    iuv: str | None
    nav: str | None
    iupd: str | None
    state: str
    amount: Decimal
    causale: str
    due_date: date | None
    category: str
    debtor_type: str
    debtor_id: str
    debtor_name: str
    debtor_address: str | None = None
    debtor_civic: str | None = None
    debtor_cap: str | None = None
    debtor_locality: str | None = None
    debtor_province: str | None = None
    debtor_nation: str | None = None
    debtor_email: str | None = None
    debtor_phone: str | None = None
    items: tuple[CandidateItem, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Step:
    """The next call (``action`` on ``iupd``), or DONE with its ``result`` and ``reason``."""

    action: Action
    iupd: str | None = None
    result: Result | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RemoteCopy:
    """What GPD's GET says of a position: its status, its IUVs and whether it holds what we would send."""

    status: str
    iuvs: frozenset[str]
    same_content: bool


def done(result: Result, reason: str | None = None, *, iupd: str | None = None) -> Step:
    """A final step."""
    return Step(Action.DONE, iupd=iupd, result=result, reason=reason)


def today_in_rome(now: datetime) -> date:
    """The Italian calendar day of an instant: due dates are Italian days."""
    return now.astimezone(ROME).date()


def due_instant(day: date) -> datetime:
    """The last second of an Italian calendar day (a notice is payable through its due date)."""
    return datetime.combine(day, time(23, 59, 59), tzinfo=ROME)


def cents(amount: Decimal) -> int:
    """Euro → integer cents, refusing fractions of a cent."""
    value = amount * 100
    if value != value.to_integral_value():
        raise ValueError(f"{amount} has fractions of a cent")
    return int(value)


def default_iupd(*, id_dominio: str, iuv: str) -> str:
    """The IUPD of a position that has none yet (the form ``store.positions`` gives new positions)."""
    return f"{id_dominio}-{iuv}"


def next_iupd(iupd: str) -> str | None:
    """``<iupd>-R1``, ``-R2``…: the IUPD of a restored position whose previous copy is terminal at GPD."""
    match = _RESTORED.match(iupd)
    base, n = (match.group("base"), int(match.group("n"))) if match else (iupd, 0)
    return None if n >= MAX_RESTORES else f"{base}-R{n + 1}"


def aca_problem(candidate: Candidate) -> str | None:
    """Why ACA cannot hold this position (one IBAN of the EC itself, no stamps), or None."""
    if any(i.kind == "STAMP" for i in candidate.items):
        return "ACA: una marca da bollo digitale non e' pubblicabile su ACA"
    if any(i.id_dominio != candidate.id_dominio for i in candidate.items):
        return "ACA: una posizione multibeneficiario non e' pubblicabile su ACA"
    ibans = {i.iban for i in candidate.items}
    if len(ibans) != 1 or None in ibans:
        return "ACA: le voci devono accreditare un unico IBAN"
    (iban,) = ibans
    if iban is None or len(iban) != ACA_IBAN_LENGTH:
        return f"ACA: l'IBAN deve avere {ACA_IBAN_LENGTH} caratteri"
    return None


def content_problem(candidate: Candidate) -> str | None:
    """Why the position cannot be written as a GPD/ACA message, or None."""
    if not 1 <= len(candidate.items) <= 5:
        return f"{len(candidate.items)} voci: GPD ne accetta da 1 a 5"
    try:
        if cents(candidate.amount) < 1 or any(cents(i.amount) < 1 for i in candidate.items):
            return "importo non positivo"
    except ValueError as exc:
        return str(exc)
    for item in candidate.items:
        if item.kind == "STAMP":
            if not (item.stamp_type and item.stamp_hash and item.stamp_province):
                return f"voce {item.index}: marca da bollo incompleta"
        elif not item.iban:
            return f"voce {item.index}: IBAN mancante"
    if candidate.target == ACA:
        return aca_problem(candidate)
    return None


def plan(candidate: Candidate, *, today: date) -> Step:
    """The first call to make for a queued position, or why none is made."""
    c = candidate
    if not c.iuv or not c.nav:
        return done(Result.SKIPPED, "posizione senza IUV")
    if c.target not in (GPD, ACA):
        return done(Result.SKIPPED, "la stazione dell'ente non pubblica su GPD/ACA")
    if not c.creditor_enabled:
        return done(Result.SKIPPED, "ente disabilitato")
    iupd = c.iupd or default_iupd(id_dominio=c.id_dominio, iuv=c.iuv)
    if c.state == ANNULLATA:
        return Step(Action.INVALIDATE, iupd)
    if c.state in PAID_STATES:
        return done(Result.SKIPPED, f"posizione gia' pagata ({c.state})")
    if c.due_date is not None and c.due_date < today:
        return done(Result.SKIPPED, f"scaduta il {c.due_date.isoformat()}")
    problem = content_problem(c)
    if problem:
        return done(Result.SKIPPED, problem)
    return Step(Action.CREATE if c.published_version == 0 else Action.UPDATE, iupd)


def after_not_found(action: Action, *, iupd: str) -> Step:
    """The next step when GPD answers 404 for ``iupd``."""
    if action in (Action.UPDATE, Action.PUBLISH):
        return Step(Action.CREATE, iupd)  # GPD lost it, or the IUPD changed: create it
    if action in (Action.INVALIDATE, Action.DELETE):
        return done(Result.INVALIDATED, "non presente in GPD")
    return done(Result.FAILED, f"GPD: {iupd} non trovata")


def after_conflict(action: Action, *, iuv: str, iupd: str, remote: RemoteCopy | None) -> Step:
    """The next step when GPD answers 409 to ``action`` on ``iupd``; ``remote`` is its GET (None: 404)."""
    if action in (Action.INVALIDATE, Action.DELETE):
        if remote is None:
            return done(Result.INVALIDATED, "non presente in GPD")
        if remote.status == "INVALID":
            return done(Result.INVALIDATED, "gia' invalidata in GPD")
        if remote.status == "DRAFT":
            return Step(
                Action.DELETE, iupd
            )  # a draft cannot be invalidated; deleting it frees nothing payable
        if remote.status in PAID_AT_GPD:
            return done(Result.SKIPPED, f"pagata su pagoPA (GPD {remote.status}): non invalidata")
        return done(Result.FAILED, f"GPD {remote.status}: invalidazione rifiutata")
    if remote is None:
        if action is Action.UPDATE:
            return Step(Action.CREATE, iupd)
        return done(Result.FAILED, f"IUV {iuv} gia' presente in GPD sotto un'altra IUPD")
    if remote.status in OPEN_AT_GPD:
        if remote.same_content:
            if remote.status == "DRAFT":
                return Step(Action.PUBLISH, iupd)
            return done(Result.UNCHANGED, iupd=iupd)
        if action is Action.CREATE:
            return Step(Action.UPDATE, iupd)
        return done(
            Result.FAILED, f"GPD ha rifiutato l'aggiornamento di {iupd} ({remote.status}): IUV in conflitto"
        )
    if remote.status in PAID_AT_GPD:
        return done(Result.SKIPPED, f"gia' pagata su pagoPA (GPD {remote.status})")
    if iuv in remote.iuvs:
        return done(
            Result.FAILED,
            f"IUV {iuv} {'invalidato' if remote.status == 'INVALID' else 'scaduto'} in GPD "
            "(stato terminale): per ripristinarla serve un nuovo numero avviso",
        )
    following = next_iupd(iupd)
    if following is None:
        return done(Result.FAILED, f"{iupd}: troppi ripristini")
    return Step(Action.CREATE, following)


def after_aca_refusal(*, invalidate: bool, status: int | None) -> Step:
    """The outcome of a refused ``paCreatePosition`` (404, 409, 422…)."""
    if status == 404 and invalidate:
        return done(Result.INVALIDATED, "non presente in ACA")
    if status == 409:
        return done(Result.FAILED, "ACA: IUV di una posizione GPD, azione non autorizzata")
    if status == 422:
        if invalidate:
            return done(Result.SKIPPED, "pagata su pagoPA (ACA): non invalidata")
        return done(
            Result.FAILED,
            "ACA: posizione pagata o invalidata su pagoPA; per ripristinarla serve un nuovo numero avviso",
        )
    return done(Result.FAILED, f"ACA: richiesta rifiutata (HTTP {status})")


@dataclass(frozen=True)
class Outcome:
    """What happened to one position in a run; ``version`` is the version that was sent (or judged)."""

    position_id: int
    version: int
    result: Result
    reason: str | None = None
    iupd: str | None = None
    retriable: bool = False
    id_dominio: str | None = None
    iuv: str | None = None


def outcome_of(candidate: Candidate, step: Step, *, iupd: str | None = None) -> Outcome:
    """The outcome of a final step for a candidate."""
    if step.result is None:
        raise ValueError("not a final step")
    return Outcome(
        position_id=candidate.id,
        version=candidate.version,
        result=step.result,
        reason=step.reason,
        iupd=step.iupd or iupd or candidate.iupd,
        id_dominio=candidate.id_dominio,
        iuv=candidate.iuv,
    )
