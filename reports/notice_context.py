"""Building the context of a payment notice from stored positions (pure mapping, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

from models.positions import Position, PositionItem
from models.registry import Creditor
from reports.notice import NoticeContext, NoticeCreditor, NoticeDebtor, NoticeOption


def _postal_account(items: Sequence[PositionItem]) -> str | None:
    for item in items:
        if item.postal and item.iban:
            return item.iban[-12:].lstrip("0") or None  # a postal account number is the IBAN's account part
    return None


def notice_context(*, creditor: Creditor, positions: Sequence[tuple[Position, Sequence[PositionItem]]],
                   language: str = "it") -> NoticeContext:
    """One notice for a position, or for all instalments of a document (the single payment first)."""
    first, first_items = positions[0]
    address = " ".join(x for x in (first.debtor_address, first.debtor_civic, first.debtor_cap,
                                   first.debtor_locality, first.debtor_province) if x) or None
    options = []
    postal = None
    for position, items in positions:
        if not position.nav or not position.iuv:
            raise ValueError(f"position {position.id_pendenza} has no notice number yet")
        account = _postal_account(items)
        postal = postal or account
        options.append(NoticeOption(nav=position.nav, iuv=position.iuv, amount=position.amount,
                                    due_date=position.due_date, instalment=position.instalment,
                                    postal=account is not None))
    options.sort(key=lambda o: (o.instalment is not None, o.instalment or 0))
    return NoticeContext(
        creditor=NoticeCreditor(fiscal_code=creditor.id_dominio, name=creditor.name, sector=creditor.sector,
                                info=creditor.contacts or creditor.address, cbill=creditor.cbill,
                                logo_path=creditor.logo_path, postal_account=postal),
        debtor=NoticeDebtor(fiscal_code=first.debtor_id, name=first.debtor_name, address=address),
        reason=first.document_description if len(positions) > 1 and first.document_description else first.causale,
        options=tuple(options), document_id=first.document_id, language=language,
    )
