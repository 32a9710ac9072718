"""Reconciliation decisions (pure): does the money named after a flow or an IUV explain it, and with what code."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

# GovPay's outcome codes of a riconciliazione (DOMAIN §10)
NOT_PROCESSABLE = "021400"
CAUSALE_INVALID = "021401"
PAYMENT_NOT_FOUND = "021402"
FLOW_ANOMALOUS = "021404"
FLOW_NOT_FOUND = "021405"
WRONG_AMOUNT = "021407"
DUPLICATE_DIFFERENT = "021409"
UNKNOWN_EC = "021410"
FLOW_ALREADY_CASHED = "021413"
PAYMENT_ALREADY_CASHED = "021406"


@dataclass(frozen=True)
class FlowFacts:
    """What reconciliation needs of the newest revision of a flow."""

    flow_id: int
    id_flusso: str
    state: str
    total_amount: Decimal


@dataclass(frozen=True)
class Decision:
    """The verdict on the money that names one flow: MATCH (cash it), WAIT (maybe later) or ERROR."""

    outcome: str
    code: str | None
    label: str | None
    description: str


def decide_flow(*, money: Decimal, flow: FlowFacts | None) -> Decision:
    """Whether the sum of the movements naming a flow cashes it.

    Money can arrive before its flow (WAIT, labelled as unknown until the flow comes), in several transfers
    (summed before deciding) or be reversed (the reversal's negative amount is in the sum, so the flow is no
    longer cashed). A flow with anomalies is never cashed silently.
    """
    if flow is None:
        return Decision("WAIT", FLOW_NOT_FOUND, "TES_NO_IUF_OR_IUV", "flusso di rendicontazione non ancora ricevuto")
    if money == 0:
        return Decision("WAIT", None, None, "importo stornato: nessun incasso")
    if flow.state == "ANOMALA":
        return Decision("ERROR", FLOW_ANOMALOUS, "IUF_TES_DIV_IMP", f"il flusso {flow.id_flusso} presenta anomalie")
    if money == flow.total_amount:
        return Decision("MATCH", None, "RT_IUF_TES", f"incassato il flusso {flow.id_flusso}")
    if money < flow.total_amount:
        return Decision("WAIT", WRONG_AMOUNT, "IUF_TES_DIV_IMP",
                        f"incassati {money} su {flow.total_amount}: in attesa di altri riversamenti")
    return Decision("ERROR", WRONG_AMOUNT, "IUF_TES_DIV_IMP",
                    f"incassati {money}, il flusso {flow.id_flusso} ne dichiara {flow.total_amount}")


def split_repeats(parts: list[tuple[int, Decimal]], *, flow: FlowFacts | None
                  ) -> tuple[list[tuple[int, Decimal]], list[int]]:
    """The transfers naming one flow, in the order they reached the account: those summed, and those refused.

    A credit that arrives when the money so far already equals the flow's total is another transfer for a
    flow already cashed (GovPay refuses it with 021413): it is refused, and the first cashing stands. Integrative
    or split transfers (the sum not yet reached) and reversals (negative) are summed.
    """
    if flow is None:
        return parts, []
    kept: list[tuple[int, Decimal]] = []
    refused: list[int] = []
    total = Decimal("0.00")
    for movement_id, amount in parts:
        if amount > 0 and total == flow.total_amount:
            refused.append(movement_id)
            continue
        kept.append((movement_id, amount))
        total += amount
    return kept, refused


def flow_already_cashed(flow: FlowFacts) -> Decision:
    """The verdict on a transfer refused by ``split_repeats``: money the flow does not explain (its label)."""
    return Decision("ERROR", FLOW_ALREADY_CASHED, "IUF_TES_DIV_IMP",
                    f"il flusso {flow.id_flusso} risulta già incassato da un altro riversamento")


def payment_already_cashed() -> Decision:
    """The verdict on a second /RFB/ or /RFS/ transfer for an IUV an earlier transfer cashed (021406)."""
    return Decision("ERROR", PAYMENT_ALREADY_CASHED, None, "pagamento già incassato da un altro riversamento")


def decide_single(*, money: Decimal, paid: Decimal | None) -> Decision:
    """Whether a /RFB/ or /RFS/ movement cashes the payment of its IUV."""
    if paid is None:
        return Decision("WAIT", PAYMENT_NOT_FOUND, "TES_NO_IUF_OR_IUV", "pagamento non trovato per lo IUV")
    if money == paid:
        return Decision("MATCH", None, "RT_TES", "incassato il pagamento")
    return Decision("ERROR", WRONG_AMOUNT, "TES_NO_IUF_OR_IUV", f"incassati {money}, pagati {paid}")


@dataclass(frozen=True)
class Candidate:
    """An unreconciled flow that might explain money without a usable remittance."""

    flow_id: int
    total_amount: Decimal
    settlement_date: date | None
    psp_name: str | None
    psp_id: str
    settlement_ref: str | None
    id_flusso: str


def suggestion_score(*, amount: Decimal, value_date: date | None, ordering_party: str | None,
                     references: tuple[str | None, ...], partial_reference: str | None,
                     candidate: Candidate, window_days: int = 5) -> tuple[float, list[str]]:
    """How likely a flow explains a movement, with the reasons an operator reads (0 = not at all)."""
    if candidate.total_amount != amount:
        return 0.0, []
    score, reasons = 0.4, ["stesso importo"]
    if value_date and candidate.settlement_date:
        days = abs((value_date - candidate.settlement_date).days)
        if days > window_days:
            return 0.0, []
        score += 0.2 * (1 - days / (window_days + 1))
        reasons.append(f"date a {days} giorni")
    party = (ordering_party or "").upper()
    if party and (candidate.psp_id.upper() in party or (candidate.psp_name or "~").upper()[:12] in party):
        score += 0.2
        reasons.append("ordinante compatibile con il PSP")
    if candidate.settlement_ref and any(r and candidate.settlement_ref in r for r in references):
        score += 0.3
        reasons.append("riferimento di regolamento coincidente")
    if partial_reference and candidate.id_flusso.lower().startswith(partial_reference.lower()):
        score += 0.3
        reasons.append("causale troncata compatibile")
    return min(score, 1.0), reasons
