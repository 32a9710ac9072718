"""What the station answers pagoPA: payability of a notice, faults, and the transfers of a payment (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from rules.identifiers import voce_remittance
from rules.positions import PAID_STATES

DEFAULT_TRANSFER_CATEGORY = "9/0101108TS/"  # "altre entrate": used when neither voce nor debt type carries one
FAR_DUE_DATE = date(2099, 12, 31)  # paGetPayment requires a dueDate; a position without one never expires

FAULT_STRINGS = {
    "PAA_PAGAMENTO_SCONOSCIUTO": "Pagamento in attesa risulta sconosciuto all'Ente Creditore",
    "PAA_PAGAMENTO_SCADUTO": "Pagamento in attesa risulta scaduto all'Ente Creditore",
    "PAA_PAGAMENTO_ANNULLATO": "Pagamento in attesa risulta annullato all'Ente Creditore",
    "PAA_PAGAMENTO_DUPLICATO": "Pagamento in attesa risulta concluso all'Ente Creditore",
    "PAA_PAGAMENTO_IN_CORSO": "Pagamento in attesa risulta in corso all'Ente Creditore",
    "PAA_ID_DOMINIO_ERRATO": "La PAA non corrisponde al Dominio indicato",
    "PAA_ID_INTERMEDIARIO_ERRATO": "Identificativo intermediario non corrispondente",
    "PAA_STAZIONE_INT_ERRATA": "Stazione intermediario non corrispondente",
    "PAA_SINTASSI_XSD": "Errore di sintassi XSD",
    "PAA_SEMANTICA": "Errore semantico",
    "PAA_RECEIPT_DUPLICATA": "La ricevuta e' gia' stata ricevuta per un altro pagamento",
    "PAA_SYSTEM_ERROR": "Errore generico",
}


class StationFault(Exception):
    """A fault the station answers with (outcome KO), carrying pagoPA's code."""

    def __init__(self, code: str, *, id_dominio: str, description: str | None = None) -> None:
        self.code = code
        self.id_dominio = id_dominio
        self.fault_string = FAULT_STRINGS.get(code, code)
        self.description = description or self.fault_string
        super().__init__(f"{code}: {self.description}")


def payability_fault(*, state: str | None, due_date: date | None, today: date) -> str | None:
    """The fault code that stops a notice from being paid now, or None when it can be paid."""
    if state is None:
        return "PAA_PAGAMENTO_SCONOSCIUTO"
    if state == "ANNULLATA":
        return "PAA_PAGAMENTO_ANNULLATO"
    if state in PAID_STATES:
        return "PAA_PAGAMENTO_DUPLICATO"
    if due_date is not None and due_date < today:
        return "PAA_PAGAMENTO_SCADUTO"
    return None


@dataclass(frozen=True)
class TransferOut:
    """One transfer of a paGetPayment answer."""

    id_transfer: int
    amount: Decimal
    fiscal_code: str
    company_name: str | None
    iban: str | None
    remittance: str
    category: str
    stamp: tuple[str, str, str] | None = None  # (hashDocumento, tipoBollo, provinciaResidenza)


def transfer_category(*, item_taxonomy: str | None, position_taxonomy: str | None) -> str:
    """The taxonomy of a transfer: the voce's, else the position's, else 'altre entrate'."""
    return item_taxonomy or position_taxonomy or DEFAULT_TRANSFER_CATEGORY


def remittance_for(*, iuv: str, amount: Decimal, description: str | None) -> str:
    """The remittance of a transfer: /RFB/<IUV>/<amount>/TXT/<description>, at most 140 characters."""
    return voce_remittance(iuv=iuv, amount=amount, text=description)
