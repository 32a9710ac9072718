"""ISO 20022 camt.053 (statement) and camt.054 (debit/credit notification), versions .001.02 to .001.08.

One ``Ntry`` is one movement, however many ``TxDtls`` it batches: their ``Ustrd`` lines form the remittance
(a 140-character line was cut mid-text and continues in the next), followed by any structured creditor
reference and additional remittance lines; the end-to-end id is kept when they all agree. The counterparty
is the debtor of a credit and the creditor of a debit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from typing import IO

from lxml import etree

from connectors.treasury.formats._common import (
    blank_to_none,
    join_segments,
    parse_amount,
    parse_date,
    xml_errors,
)
from connectors.treasury.movement import Movement, TreasuryFormatError
from rules.xmlsafe import iterparse_xml, local_name

USTRD_WIDTH = 140
_NAMESPACE = re.compile(r"urn:iso:std:iso:20022:tech:xsd:camt\.05[34]\.001\.\d{2}")
_CONTAINERS = frozenset({"Stmt", "Ntfctn", "Rpt"})


def _children(element: etree._Element, name: str) -> Iterator[etree._Element]:
    for child in element:
        if isinstance(child.tag, str) and local_name(child) == name:
            yield child


def _child(element: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        if element is None:
            return None
        element = next(_children(element, name), None)
    return element


def _text(element: etree._Element | None, *path: str) -> str | None:
    found = _child(element, *path)
    return blank_to_none(found.text) if found is not None else None


def _date(element: etree._Element | None, *, source_name: str, record: int, field: str) -> date | None:
    """A DateAndDateTimeChoice: ``Dt`` or the date part of ``DtTm``."""
    if element is None:
        return None
    raw = _text(element, "Dt")
    if raw is None:
        moment = _text(element, "DtTm")
        raw = moment[:10] if moment else None
    if raw is None:
        return None
    return parse_date(
        raw[:10], fmt="%Y-%m-%d", source_name=source_name, record=record, field=field, required=True
    )


def _party_name(element: etree._Element | None) -> str | None:
    """``Nm`` of a party, directly (.001.02) or under ``Pty`` (.001.08)."""
    return _text(element, "Nm") or _text(element, "Pty", "Nm")


def _account(element: etree._Element) -> str | None:
    return _text(element, "Id", "IBAN") or _text(element, "Id", "Othr", "Id")


def _movement(entry: etree._Element, *, ordinal: int, account: str | None, source_name: str) -> Movement:
    amount_element = _child(entry, "Amt")
    if amount_element is None:
        raise TreasuryFormatError("Amt is missing", source_name=source_name, record=ordinal, field="Amt")
    amount = parse_amount(amount_element.text, source_name=source_name, record=ordinal, field="Amt")
    indicator = _text(entry, "CdtDbtInd")
    if indicator not in ("CRDT", "DBIT"):
        raise TreasuryFormatError(
            f"CdtDbtInd {indicator!r} is neither CRDT nor DBIT",
            source_name=source_name,
            record=ordinal,
            field="CdtDbtInd",
        )
    credit = indicator == "CRDT"
    reversal = (_text(entry, "RvslInd") or "").lower() in ("true", "1")
    lines: list[str] = []
    structured_parts: list[str] = []
    end_to_end: set[str] = set()
    counterparty: str | None = None
    bank_reference = _text(entry, "AcctSvcrRef")
    details = _child(entry, "NtryDtls")
    transactions = list(_children(details, "TxDtls")) if details is not None else []
    for transaction in transactions:
        references = _child(transaction, "Refs")
        identifier = _text(references, "EndToEndId")
        if identifier is not None:
            end_to_end.add(identifier)
        bank_reference = bank_reference or _text(references, "AcctSvcrRef")
        parties = _child(transaction, "RltdPties")
        if counterparty is None and parties is not None:
            first, second = ("Dbtr", "Cdtr") if credit else ("Cdtr", "Dbtr")
            counterparty = _party_name(_child(parties, first)) or _party_name(_child(parties, second))
        information = _child(transaction, "RmtInf")
        if information is not None:
            lines.extend(line.text or "" for line in _children(information, "Ustrd"))
            for structured in _children(information, "Strd"):
                structured_parts.append(_text(structured, "CdtrRefInf", "Ref") or "")
                structured_parts.extend(extra.text or "" for extra in _children(structured, "AddtlRmtInf"))
    # Structured references (a creditor reference, additional lines) follow the free text, as printed.
    remittance = " ".join(
        part
        for part in (
            join_segments(lines, width=USTRD_WIDTH),
            " ".join(p.strip() for p in structured_parts if p.strip()),
        )
        if part
    )
    if not remittance:
        # No unstructured line: fall back to what the bank wrote about the transaction or the entry.
        extra = [_text(transaction, "AddtlTxInf") or "" for transaction in transactions]
        remittance = join_segments([*extra, _text(entry, "AddtlNtryInf") or ""], width=USTRD_WIDTH)
    code = _child(entry, "BkTxCd")
    domain = _child(code, "Domn")
    kind: str | None
    if domain is not None:
        kind = "/".join(
            part
            for part in (_text(domain, "Cd"), _text(domain, "Fmly", "Cd"), _text(domain, "Fmly", "SubFmlyCd"))
            if part
        )
    else:
        kind = _text(code, "Prtry", "Cd")
    status = _text(entry, "Sts") or _text(entry, "Sts", "Cd")
    return Movement(
        account=account,
        amount=amount if credit else -amount,
        currency=amount_element.get("Ccy") or "EUR",
        value_date=_date(_child(entry, "ValDt"), source_name=source_name, record=ordinal, field="ValDt"),
        booking_date=_date(
            _child(entry, "BookgDt"), source_name=source_name, record=ordinal, field="BookgDt"
        ),
        remittance=remittance,
        ordering_party=counterparty,
        end_to_end_id=end_to_end.pop() if len(end_to_end) == 1 else None,
        bank_reference=bank_reference,
        # NtryRef numbers entries within one statement only; the entry's AcctSvcrRef is the bank's own id
        bank_movement_id=_text(entry, "AcctSvcrRef"),
        reversal=reversal,
        kind=kind or None,
        status=status,
        ordinal=ordinal,
    )


def read_camt(stream: IO[bytes], *, source_name: str = "") -> Iterator[Movement]:
    """Yield the entries of a camt.053/054 document in streaming, across all its statements."""
    account: str | None = None
    ordinal = 0
    seen_root = False
    with xml_errors(source_name):
        for event, element in iterparse_xml(stream, events=("start", "end")):
            if not isinstance(element.tag, str):
                continue
            if event == "start":
                if not seen_root:
                    namespace = etree.QName(element).namespace or ""
                    if local_name(element) != "Document" or not _NAMESPACE.fullmatch(namespace):
                        raise TreasuryFormatError(
                            f"not a camt.053/054 document: root {element.tag!r}",
                            source_name=source_name,
                            field="Document",
                        )
                    seen_root = True
                continue
            name = local_name(element)
            if name == "Ntry":
                ordinal += 1
                yield _movement(element, ordinal=ordinal, account=account, source_name=source_name)
                element.clear()
                parent = element.getparent()
                if parent is not None:
                    while element.getprevious() is not None:
                        del parent[0]
            elif name == "Acct":
                parent = element.getparent()
                if parent is not None and local_name(parent) in _CONTAINERS:
                    account = _account(element)
            elif name in _CONTAINERS:
                element.clear()
    if not seen_root:
        raise TreasuryFormatError("empty document", source_name=source_name, field="Document")
