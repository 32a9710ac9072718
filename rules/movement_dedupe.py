"""Whether a credit posted through the API Ragioneria and one read from the treasury journal are one credit.

The same credit can reach us twice: the EC's accounting posts it (``PUT /riconciliazioni``) and the bank's
journal brings it, later or earlier. Both must become one movement, or reconciliation counts the money twice.

Two movements are the same money (``twin_evidence``) when

- they are on the same account and for the same amount (so a reversal never matches a credit),
- their value dates, when both are known, are at most ``VALUE_DATE_WINDOW_DAYS`` apart,
- they share a transfer reference (TRN / SCT / end-to-end id: evidence ``TRN``), or else both name the same
  flow (``IUF``) or IUV (``IUV``, with the integrative transfer number).

A shared reference makes them one transfer even when the two name different things (``names_conflict``): the
money is counted once, the bank's naming stands, and the conflict is reported, never silently kept as two
credits for two flows.

The shared reference is the strong evidence; the named flow or IUV stands in when the reference the EC typed
is not one the bank prints (a CRO for the TRN) or the journal has none. A wrong pairing by name can only
swap which of two equal credits for the same flow carries the API's id: the totals stay right, since every
credit is in the journal and each pairs at most once. ``pair_twins`` pairs many at once, shared references
first, then the earliest movements.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

VALUE_DATE_WINDOW_DAYS = 5  # a weekend and a bank holiday between the date the EC typed and the bank's
USABLE_KINDS = frozenset({"flow", "iuv"})
# what banks print when a reference is missing: never evidence of anything
_PLACEHOLDERS = frozenset({"NOTPROVIDED", "NONREF", "NONE", "NA", "N/A", "0"})

Evidence = Literal["TRN", "IUF", "IUV"]


def normal_reference(value: str | None) -> str | None:
    """A transfer reference compared without blanks or case; None for nothing or a bank placeholder."""
    if value is None:
        return None
    compact = "".join(value.split()).upper()
    return compact if compact and compact not in _PLACEHOLDERS else None


@dataclass(frozen=True, slots=True)
class MoneyFacts:
    """What tells one credit on an account from another, whoever reported it."""

    id: int
    account: str
    amount: Decimal
    value_date: date | None
    references: frozenset[str]
    names: tuple[str, str, int] | None  # (kind, reference case-folded, integrative transfer number)


def money_facts(
    *,
    id: int,  # noqa: A002 - the movement's id
    account: str,
    amount: Decimal,
    value_date: date | None,
    references: Iterable[str | None],
    reference_kind: str | None,
    reference: str | None,
    integrative: int | None = None,
) -> MoneyFacts:
    """The facts of a movement: references normalised, the flow or IUV it names (if usable)."""
    refs = frozenset(r for r in (normal_reference(v) for v in references) if r is not None)
    names = (
        (reference_kind, reference.casefold(), integrative or 0)
        if reference_kind in USABLE_KINDS and reference
        else None
    )
    return MoneyFacts(
        id=id,
        account="".join(account.split()).upper(),
        amount=amount,
        value_date=value_date,
        references=refs,
        names=names,
    )


def twin_evidence(
    api: MoneyFacts, journal: MoneyFacts, *, window_days: int = VALUE_DATE_WINDOW_DAYS
) -> Evidence | None:
    """Why the two are the same money (``TRN``, ``IUF``, ``IUV``), or None when they are not."""
    if api.account != journal.account or api.amount != journal.amount:
        return None
    if api.value_date and journal.value_date:
        if abs((api.value_date - journal.value_date).days) > window_days:
            return None
    if api.references & journal.references:  # the same transfer, even if the two name different things
        return "TRN"
    if api.names is not None and api.names == journal.names:
        return "IUF" if api.names[0] == "flow" else "IUV"
    return None


def names_conflict(api: MoneyFacts, journal: MoneyFacts) -> bool:
    """Whether two copies of one transfer name different things: the EC's accounting and the bank disagree."""
    return api.names is not None and journal.names is not None and api.names != journal.names


@dataclass(frozen=True, slots=True)
class Twin:
    """An API movement and the journal movement that is the same money."""

    api_id: int
    journal_id: int
    evidence: Evidence


def pair_twins(
    apis: Sequence[MoneyFacts], journals: Sequence[MoneyFacts], *, window_days: int = VALUE_DATE_WINDOW_DAYS
) -> list[Twin]:
    """Pair API movements with journal movements, each at most once: shared references first, then by id."""
    by_key: dict[tuple[str, Decimal], list[MoneyFacts]] = defaultdict(list)
    for j in journals:
        by_key[(j.account, j.amount)].append(j)
    found: list[tuple[int, int, int, Evidence]] = []
    for a in apis:
        for j in by_key.get((a.account, a.amount), ()):
            evidence = twin_evidence(a, j, window_days=window_days)
            if evidence is not None:
                found.append((0 if evidence == "TRN" else 1, a.id, j.id, evidence))
    used_api: set[int] = set()
    used_journal: set[int] = set()
    twins = []
    for _rank, api_id, journal_id, evidence in sorted(found):
        if api_id in used_api or journal_id in used_journal:
            continue
        used_api.add(api_id)
        used_journal.add(journal_id)
        twins.append(Twin(api_id, journal_id, evidence))
    return twins


# the journal movement's columns that the API's submission may complete
COMPLETED_FIELDS = (
    "reference_kind",
    "reference",
    "reference_lower",
    "integrative",
    "bank_reference",
    "value_date",
    "booking_date",
)


def completed_from_api(*, journal: Mapping[str, Any], api: Mapping[str, Any]) -> dict[str, Any]:
    """What the journal movement takes from the API's copy of the same money: only what the bank left out.

    The bank's data wins where it has any; the flow or IUV the EC named is taken when the bank's remittance
    names nothing usable (cut, mangled or free text), so the next reconcile run can cash it.
    """
    changes: dict[str, Any] = {}
    if journal.get("reference_kind") not in USABLE_KINDS and api.get("reference_kind") in USABLE_KINDS:
        for name in ("reference_kind", "reference", "reference_lower", "integrative"):
            changes[name] = api.get(name)
    for name in ("bank_reference", "value_date", "booking_date"):
        if journal.get(name) is None and api.get(name) is not None:
            changes[name] = api[name]
    return changes
