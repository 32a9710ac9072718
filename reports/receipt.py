"""The receipt PDF (ricevuta di pagamento): a typed context rendered with reportlab, pure bytes out."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen import canvas

from reports.notice import format_amount

ROME = ZoneInfo("Europe/Rome")


@dataclass(frozen=True)
class ReceiptLine:
    """One transfer of the payment."""

    index: int
    description: str
    beneficiary: str
    amount: Decimal


@dataclass(frozen=True)
class ReceiptContext:
    """Everything a receipt PDF shows."""

    creditor_name: str
    creditor_fiscal_code: str
    receipt_id: str
    iuv: str
    nav: str | None
    reason: str
    amount: Decimal
    fee: Decimal | None
    paid_at: datetime | None
    psp: str
    debtor: str
    payer: str | None
    outcome: str
    lines: tuple[ReceiptLine, ...]


def _text(value: str | None, limit: int = 90) -> str:
    clean = "".join(ch if ch.isprintable() else " " for ch in (value or ""))
    clean = clean.encode("latin-1", errors="replace").decode("latin-1")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def render_receipt_pdf(ctx: ReceiptContext) -> bytes:
    """One A4 page: who paid whom, how much, when, through which PSP, and each transfer."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=True)
    pdf.setTitle(f"Ricevuta {ctx.receipt_id}")
    width, height = A4
    y = height - 25 * mm
    pdf.setFont("Helvetica-Bold", 16)
    pdf.drawString(20 * mm, y, "RICEVUTA DI PAGAMENTO pagoPA")
    y -= 10 * mm
    pdf.setFont("Helvetica", 10)
    rows = [
        ("Ente creditore", f"{_text(ctx.creditor_name)} ({ctx.creditor_fiscal_code})"),
        ("Oggetto", _text(ctx.reason)),
        ("Codice avviso", ctx.nav or "-"), ("IUV", ctx.iuv), ("Identificativo ricevuta", _text(ctx.receipt_id)),
        ("Esito", "PAGATO" if ctx.outcome == "OK" else ctx.outcome),
        ("Importo", format_amount(ctx.amount)),
        ("Commissioni", format_amount(ctx.fee) if ctx.fee is not None else "-"),
        ("Data pagamento", ctx.paid_at.astimezone(ROME).strftime("%d/%m/%Y %H:%M") if ctx.paid_at else "-"),
        ("Prestatore (PSP)", _text(ctx.psp)), ("Debitore", _text(ctx.debtor)),
        ("Versante", _text(ctx.payer) if ctx.payer else "-"),
    ]
    for label, value in rows:
        pdf.setFont("Helvetica-Bold", 10)
        pdf.drawString(20 * mm, y, label)
        pdf.setFont("Helvetica", 10)
        pdf.drawString(70 * mm, y, value)
        y -= 6 * mm
    y -= 4 * mm
    pdf.setFont("Helvetica-Bold", 11)
    pdf.drawString(20 * mm, y, "Dettaglio dei versamenti")
    y -= 7 * mm
    pdf.setFont("Helvetica", 9)
    for line in ctx.lines:
        pdf.drawString(20 * mm, y, f"{line.index}. {_text(line.description, 60)}")
        pdf.drawString(120 * mm, y, _text(line.beneficiary, 20))
        pdf.drawRightString(width - 20 * mm, y, format_amount(line.amount))
        y -= 5 * mm
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()
