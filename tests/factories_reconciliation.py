"""Factories for reconciliation scenarios: paid positions, reporting flows linked to them, treasury money."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlmodel import Session, select

from models.payments import Collection, ReceiptSource
from models.positions import Position
from models.reporting import ReportingFlow, ReportingLine
from models.treasury import TreasuryMovement
from rules.positions import PendenzaPut, validate_position
from rules.receipts import ReceiptIn, ReceiptTransfer
from rules.remittance import parse_remittance
from store.payments import accept_receipt
from store.positions import load_caller, load_registry_view, upsert_positions

EC = "01234567897"
IBAN = "IT21X0306909606000000123456"
_seq = itertools.count(1)


def paid_position(s: Session, *, amount: str = "10.00", pay: bool = True, receipt_id: str | None = None) -> Position:
    """A position of the example Comune, paid through a receipt unless ``pay`` is False."""
    n = next(_seq)
    body = PendenzaPut.model_validate({
        "idTipoPendenza": "TARI", "idDominio": EC, "causale": f"Rec {n}",
        "soggettoPagatore": {"identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        "importo": amount, "dataScadenza": (date.today() + timedelta(days=30)).isoformat(),
        "voci": [{"idVocePendenza": "V1", "importo": amount, "descrizione": "Quota", "ibanAccredito": IBAN,
                  "tipoContabilita": "CAPITOLO", "codiceContabilita": "1010"}]})
    caller = load_caller(s, id_a2a="A2A-TRIBUTI")
    assert caller is not None
    data = validate_position(body, id_a2a="A2A-TRIBUTI", id_pendenza=f"REC-{n}", caller=caller,
                             registry=load_registry_view(s))
    (result,) = upsert_positions(s, batch=[data])
    position = result.position
    assert position is not None
    if pay:
        pay_position(s, position, receipt_id=receipt_id or f"RCPT{n:08d}")
    s.commit()
    return position


def pay_position(s: Session, position: Position, *, receipt_id: str) -> str:
    """A receipt for the position (status of accept_receipt)."""
    receipt = ReceiptIn(receipt_id=receipt_id, id_pa=EC, fiscal_code=EC, notice_number=position.nav or "",
                        iuv=position.iuv or "", outcome="OK", amount=position.amount,
                        transfers=(ReceiptTransfer(1, position.amount, EC, IBAN, None, None),),
                        payment_at=datetime.now(UTC))
    return accept_receipt(s, receipt=receipt, source=ReceiptSource.PUSH).status


def flow(s: Session, *, id_flusso: str, positions: list[Position], extra_lines: list[tuple[str, str, int, int]] = (),
         revision: int = 1, state: str = "ACCETTATA", declared_total: Decimal | None = None) -> ReportingFlow:
    """A reporting flow of the example Comune whose lines report the positions (linked to their collections).

    extra_lines: (iuv, amount, outcome, transfer_index) lines with no receipt (e.g. outcome 9).
    """
    lines = [(p.iuv or "", p.amount, 0, 1, p) for p in positions] + [
        (iuv, Decimal(amount), outcome, idx, None) for iuv, amount, outcome, idx in extra_lines]
    total = sum((line[1] for line in lines), Decimal("0.00"))
    row = ReportingFlow(id_dominio=EC, id_flusso=id_flusso, id_flusso_lower=id_flusso.lower(), psp_id="BCITITMM",
                        psp_name="Banca di test", revision=revision, settlement_date=date.today(),
                        settlement_ref=f"SR{id_flusso[-8:]}", total_count=len(lines),
                        total_amount=declared_total if declared_total is not None else total, state=state)
    s.add(row)
    s.flush()
    for index, (iuv, amount, outcome, idx, position) in enumerate(lines, start=1):
        line = ReportingLine(flow_id=row.id or 0, line_index=index, iuv=iuv, iur=f"IUR{row.id}-{index}",
                             transfer_index=idx, amount=amount, outcome=outcome, pay_date=date.today(),
                             position_id=position.id if position else None,
                             state="LINKED" if position else "NO_RECEIPT")
        s.add(line)
        s.flush()
        if position is not None:
            c = s.exec(select(Collection).where(Collection.iuv == iuv, Collection.flow_line_id == None)  # noqa: E711
                       .order_by(Collection.id)).first()
            if c is not None:
                c.flow_line_id, c.iur = line.id, line.iur
                line.collection_id = c.id
                s.add_all([c, line])
        elif position is None:
            known = s.exec(select(Position).where(Position.iuv == iuv)).first()
            line.position_id = known.id if known else None
            s.add(line)
    s.commit()
    return row


def money(s: Session, *, remittance: str, amount: str, reversal: bool = False, party: str = "Banca di test",
          value_date: date | None = None) -> TreasuryMovement:
    """A credit (or reversal) on the Comune's treasury account."""
    n = next(_seq)
    ref = parse_remittance(remittance)
    row = TreasuryMovement(id_dominio=EC, account=IBAN, dedupe_key=f"K{n}", amount=Decimal(amount),
                           value_date=value_date or date.today(), booking_date=date.today(), remittance=remittance,
                           ordering_party=party, bank_movement_id=f"B{n}", reversal=reversal,
                           reference_kind=ref.kind, reference=ref.reference,
                           reference_lower=ref.reference.lower() if ref.reference else None,
                           integrative=ref.integrative)
    s.add(row)
    s.commit()
    return row
