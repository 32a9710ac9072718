"""One movement for one credit: the API Ragioneria's copy of a credit joined to the treasury journal's.

A riconciliazione posted through the API before the bank's journal brings the credit is stored as a movement
of its own (dedupe key ``ragioneria:<id>``). When the journal movement for the same money arrives
(``rules.movement_dedupe``), the two become one: the journal movement survives (the bank's data, its dedupe
key for overlapping journals), the riconciliazione, the collections it cashed and its suggestions move onto
it, and the API's movement is deleted. The money is then counted once wherever it is summed (reconciliation,
reports, status). ``link_api_movements`` does this for a file just stored (ingest-treasury) and for a whole
EC (before each reconcile run, for a journal stored while the API's copy was being written).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, exists, update
from sqlmodel import Session, col, select

from models.payments import Collection
from models.reconciliation import MatchSuggestion, Reconciliation, ReconciliationState, TransferLabel
from models.treasury import MovementMatch, TreasuryMovement
from rules.movement_dedupe import (
    COMPLETED_FIELDS,
    VALUE_DATE_WINDOW_DAYS,
    MoneyFacts,
    completed_from_api,
    money_facts,
    names_conflict,
    pair_twins,
)
from rules.riconciliazioni import CAUSALE_INVALID
from store.reconciliation import cashed_by

log = logging.getLogger(__name__)

API_PREFIX = "ragioneria:"  # dedupe key of a movement known only from the API Ragioneria
_CHUNK = 500


def is_api_movement(movement: TreasuryMovement) -> bool:
    """Whether the movement is the API's copy of a credit, not (yet) joined to the journal's."""
    return movement.dedupe_key.startswith(API_PREFIX)


def facts_of(movement: TreasuryMovement) -> MoneyFacts:
    """The facts that tell the movement's money from other money."""
    return money_facts(
        id=movement.id or 0,
        account=movement.account,
        amount=movement.amount,
        value_date=movement.value_date,
        references=(movement.bank_reference, movement.end_to_end_id, movement.bank_movement_id),
        reference_kind=movement.reference_kind,
        reference=movement.reference,
        integrative=movement.integrative,
    )


def _api_claimed() -> Any:
    """Movements that carry a riconciliazione posted through the API (it has a request hash)."""
    return exists().where(
        Reconciliation.movement_id == TreasuryMovement.id, col(Reconciliation.request_hash).is_not(None)
    )


def candidates(
    session: Session,
    *,
    id_dominio: str,
    accounts: set[str],
    amounts: set[Decimal],
    dates: tuple[date, date] | None,
    journal_only: bool,
    file_id: int | None = None,
) -> list[TreasuryMovement]:
    """Credits on these accounts for these amounts, value date in the window (or unknown), oldest first.

    Reversals and movements an operator marked not pagoPA are never the same money as a submitted credit.
    """
    cond: list[Any] = [
        TreasuryMovement.id_dominio == id_dominio,
        col(TreasuryMovement.account).in_(sorted(accounts)),
        col(TreasuryMovement.reversal).is_(False),
        TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA,
    ]
    if dates is not None:
        low, high = dates[0] - timedelta(days=VALUE_DATE_WINDOW_DAYS), dates[1] + timedelta(
            days=VALUE_DATE_WINDOW_DAYS
        )
        cond.append(
            col(TreasuryMovement.value_date).is_(None) | col(TreasuryMovement.value_date).between(low, high)
        )
    if journal_only:
        cond += [~col(TreasuryMovement.dedupe_key).startswith(API_PREFIX), ~_api_claimed()]
    if file_id is not None:
        cond.append(TreasuryMovement.file_id == file_id)
    ordered = sorted(amounts)
    found: dict[int, TreasuryMovement] = {}
    for start in range(0, len(ordered), _CHUNK):
        stmt = select(TreasuryMovement).where(
            *cond, col(TreasuryMovement.amount).in_(ordered[start : start + _CHUNK])
        )
        found.update((m.id or 0, m) for m in session.exec(stmt))
    return [found[k] for k in sorted(found)]


def api_claims(session: Session, *, movement_ids: Sequence[int]) -> dict[int, str]:
    """The id of the API riconciliazione each of these movements carries, if any."""
    if not movement_ids:
        return {}
    rows = session.exec(
        select(Reconciliation.movement_id, Reconciliation.external_id).where(
            col(Reconciliation.movement_id).in_(list(movement_ids)),
            col(Reconciliation.request_hash).is_not(None),
        )
    )
    return {int(m): ext for m, ext in rows if m is not None}


def _values(movement: TreasuryMovement) -> dict[str, Any]:
    return {name: getattr(movement, name) for name in COMPLETED_FIELDS}


def complete_journal_movement(session: Session, *, journal: TreasuryMovement, api: dict[str, Any]) -> None:
    """Give the journal movement what only the API's copy says (``completed_from_api``)."""
    for name, value in completed_from_api(journal=_values(journal), api=api).items():
        setattr(journal, name, value)
    session.add(journal)


def merge_into_journal(
    session: Session, *, api: TreasuryMovement, journal: TreasuryMovement
) -> Reconciliation:
    """Make the journal movement carry the API's riconciliazione, collections and suggestions; drop the API's.

    The journal movement's own riconciliazione (``TES-<id>``, derived by reconcile) is dropped: the API's
    replaces it, and the next reconcile run decides it on the journal movement alone.
    """
    assert api.id is not None and journal.id is not None
    submitted = session.exec(
        select(Reconciliation).where(
            Reconciliation.movement_id == api.id, col(Reconciliation.request_hash).is_not(None)
        )
    ).one()
    session.execute(
        delete(Reconciliation).where(
            Reconciliation.movement_id == journal.id, col(Reconciliation.request_hash).is_(None)
        )
    )
    complete_journal_movement(session, journal=journal, api=_values(api))
    paid = cashed_by(submitted)
    submitted.movement_id = journal.id
    if (
        submitted.state == ReconciliationState.ERRORE
        and submitted.outcome_code == CAUSALE_INVALID
        and journal.reference_kind in ("flow", "iuv")
    ):
        # the bank's causale names what the EC's did not: the next run decides it
        submitted.state, submitted.outcome_code = ReconciliationState.IN_ELABORAZIONE, None
        submitted.description, submitted.processed_at = "in attesa della prossima riconciliazione", None
    if journal.reference_kind == "flow" and journal.reference:
        submitted.id_flusso, submitted.iuv = journal.reference[:35], None
    elif journal.reference_kind == "iuv" and journal.reference:
        submitted.iuv, submitted.id_flusso = journal.reference[:35], None
    session.add(submitted)
    if paid is not None:  # what the API's money cashed (the riconciliazione as it was) follows the journal's
        session.execute(update(Collection).where(paid, Collection.movement_id == api.id)
                        .values(movement_id=journal.id))
    # labels are recomputed by every reconcile run: the API movement's own go, the others follow the money
    session.execute(
        delete(TransferLabel).where(TransferLabel.movement_id == api.id, TransferLabel.subject == "movement")
    )
    session.execute(
        update(TransferLabel).where(TransferLabel.movement_id == api.id).values(movement_id=journal.id)
    )
    # a suggestion is unique per (movement, flow): the journal movement's own stays, the API's others follow
    journal_flows = set(
        session.exec(select(MatchSuggestion.flow_id).where(MatchSuggestion.movement_id == journal.id))
    )
    session.execute(
        delete(MatchSuggestion).where(
            MatchSuggestion.movement_id == api.id, col(MatchSuggestion.flow_id).in_(journal_flows)
        )
    )
    session.execute(
        update(MatchSuggestion).where(MatchSuggestion.movement_id == api.id).values(movement_id=journal.id)
    )
    session.flush()
    session.delete(api)
    session.flush()
    return submitted


@dataclass(frozen=True)
class Linked:
    """A riconciliazione posted through the API, now carried by the journal movement of the same money."""

    id_riconciliazione: str
    movement_id: int
    evidence: str


def link_api_movements(
    session: Session, *, id_dominio: str, account: str | None = None, file_id: int | None = None
) -> list[Linked]:
    """Join the EC's API movements to journal movements of the same money (of one file, if given).

    Idempotent: a joined API movement is gone, so a second call finds nothing to do. On PostgreSQL the API
    movements are claimed with ``FOR UPDATE SKIP LOCKED``: two workers never join the same one.
    """
    stmt = select(TreasuryMovement).where(
        TreasuryMovement.id_dominio == id_dominio,
        col(TreasuryMovement.dedupe_key).startswith(API_PREFIX),
        TreasuryMovement.match_state != MovementMatch.NOT_PAGOPA,
        _api_claimed(),
    )
    if account is not None:
        stmt = stmt.where(TreasuryMovement.account == account)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    apis = {m.id or 0: m for m in session.exec(stmt.order_by(col(TreasuryMovement.id)))}
    if not apis:
        return []
    dates = [m.value_date for m in apis.values() if m.value_date is not None]
    journals = {
        m.id or 0: m
        for m in candidates(
            session,
            id_dominio=id_dominio,
            accounts={m.account for m in apis.values()},
            amounts={m.amount for m in apis.values()},
            dates=(min(dates), max(dates)) if len(dates) == len(apis) else None,
            journal_only=True,
            file_id=file_id,
        )
    }
    if not journals:
        return []
    linked = []
    api_facts = {i: facts_of(m) for i, m in apis.items()}
    journal_facts = {i: facts_of(m) for i, m in journals.items()}
    for twin in pair_twins(list(api_facts.values()), list(journal_facts.values())):
        api, journal = apis[twin.api_id], journals[twin.journal_id]
        if names_conflict(api_facts[twin.api_id], journal_facts[twin.journal_id]):
            log.warning(
                "EC %s: the riconciliazione posted for %s %s is the bank's transfer %s (same reference), "
                "which names %s %s: the bank's stands",
                id_dominio, api.reference_kind, api.reference, twin.journal_id, journal.reference_kind,
                journal.reference,
            )  # fmt: skip
        submitted = merge_into_journal(session, api=api, journal=journal)
        log.info(
            "EC %s: riconciliazione %s joined to journal movement %s (same money by %s)",
            id_dominio,
            submitted.external_id,
            twin.journal_id,
            twin.evidence,
        )
        linked.append(Linked(submitted.external_id, twin.journal_id, twin.evidence))
    return linked
