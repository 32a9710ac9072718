"""The legacy RPT/RT model (Modello 1): building an RPT, reading an RT, the attempt's state machine (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from lxml import etree

from rules.receipts import ReceiptIn, ReceiptTransfer, parse_pagopa_datetime
from rules.xmlsafe import local_name, parse_xml

PAY_NS = "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"
RPT_XSD = "gad/xsd/PagInf_RPT_RT_6_2_0.xsd"
RPT_VERSION = "6.2.0"
ROME = ZoneInfo("Europe/Rome")
DEFAULT_DATI_SPECIFICI = "9/0101108TS/"  # "altre entrate", as for transfers without a taxonomy

# datiSpecificiRiscossione: "<tipo contabilita'>/<codice>", tipo 0 capitolo, 1 speciale, 2 SIOPE, 9 altro
_ACCOUNTING_DIGIT = {"CAPITOLO": "0", "SPECIALE": "1", "SIOPE": "2", "ALTRO": "9"}
_DATI_SPECIFICI = re.compile(r"[0129]/\S{3,138}")
_EMAIL = re.compile(r"[a-zA-Z0-9_.+\-]+@[a-zA-Z0-9\-]+(\.[a-zA-Z0-9\-]+)*")

# --- the attempt's states (PaymentAttempt.state) --------------------------------------------------------

RPT_ATTIVATA = "RPT_ATTIVATA"
RPT_ACCETTATA_NODO = "RPT_ACCETTATA_NODO"
RPT_RIFIUTATA_NODO = "RPT_RIFIUTATA_NODO"
RPT_ERRORE_INVIO_A_NODO = "RPT_ERRORE_INVIO_A_NODO"
RT_ACCETTATA_PA = "RT_ACCETTATA_PA"
RPT_SCADUTA = "RPT_SCADUTA"

#: attempts still waiting for their RT (the recovery asks the Node about them)
RPT_OPEN_STATES = frozenset({RPT_ATTIVATA, RPT_ACCETTATA_NODO, RPT_ERRORE_INVIO_A_NODO})
RPT_FINAL_STATES = frozenset({RPT_RIFIUTATA_NODO, RT_ACCETTATA_PA, RPT_SCADUTA})
_TRANSITIONS = {
    RPT_ATTIVATA: {
        RPT_ACCETTATA_NODO,
        RPT_RIFIUTATA_NODO,
        RPT_ERRORE_INVIO_A_NODO,
        RT_ACCETTATA_PA,
        RPT_SCADUTA,
    },
    RPT_ERRORE_INVIO_A_NODO: {RPT_ACCETTATA_NODO, RPT_RIFIUTATA_NODO, RT_ACCETTATA_PA, RPT_SCADUTA},
    RPT_ACCETTATA_NODO: {RT_ACCETTATA_PA, RPT_RIFIUTATA_NODO, RPT_SCADUTA},
    # a late RT still closes an attempt given up on: the money moved
    RPT_SCADUTA: {RT_ACCETTATA_PA},
    RPT_RIFIUTATA_NODO: set(),
    RT_ACCETTATA_PA: set(),
}

MAX_RECOVERY_ATTEMPTS = 5
RECOVERY_BASE_DELAY = timedelta(minutes=10)

# What nodoChiediStatoRPT says, as the recovery reads it
NODE_HAS_RT = "RT"  # an RT exists at the Node: ask for a copy
NODE_REFUSED = "REFUSED"  # the Node (or the PSP) refused the RPT: nothing will be paid
NODE_PENDING = "PENDING"  # still in the debtor's hands


class RptError(ValueError):
    """An RPT cannot be built from the data given, or an RT cannot be read."""


def can_move(current: str, target: str) -> bool:
    """Whether the RPT state machine allows ``current`` → ``target`` (staying put is always allowed)."""
    return current == target or target in _TRANSITIONS.get(current, set())


def node_state_meaning(stato: str) -> str:
    """How the recovery reads a state of nodoChiediStatoRPT: NODE_HAS_RT, NODE_REFUSED or NODE_PENDING."""
    if stato.startswith("RT_"):
        return NODE_HAS_RT
    if "RIFIUTATA" in stato or stato.startswith("RPT_ERRORE") or stato in {"RPT_DECORSI_TERMINI"}:
        return NODE_REFUSED
    return NODE_PENDING


def recovery_delay(*, attempts: int, base: timedelta = RECOVERY_BASE_DELAY) -> timedelta:
    """The wait after ``attempts`` recovery tries: base, 2×base, 4×base, … (exponential)."""
    return base * (2 ** max(0, attempts - 1))


# --- building an RPT ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RptSubject:
    """The debtor (pagatore) or the payer (versante) of an RPT."""

    kind: str  # F or G
    identifier: str
    name: str
    address: str | None = None
    civic: str | None = None
    cap: str | None = None
    locality: str | None = None
    province: str | None = None
    nation: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class RptTransfer:
    """One datiSingoloVersamento: an amount to an IBAN (or a digital stamp), with its accounting."""

    amount: Decimal
    remittance: str
    dati_specifici: str
    iban: str | None = None
    support_iban: str | None = None
    stamp: tuple[str, str, str] | None = None  # (tipoBollo, hashDocumento, provinciaResidenza)


@dataclass(frozen=True)
class RptData:
    """Everything one RPT says."""

    id_dominio: str
    id_stazione: str
    message_id: str
    requested_at: datetime
    creditor_name: str
    iuv: str
    ccp: str
    debtor: RptSubject
    transfers: tuple[RptTransfer, ...]
    payment_date: date
    unit_code: str | None = None
    payer: RptSubject | None = None
    authentication: str = "N/A"
    payment_type: str = "PO"

    @property
    def amount(self) -> Decimal:
        """importoTotaleDaVersare: the sum of the transfers."""
        return sum((t.amount for t in self.transfers), Decimal("0.00"))


def dati_specifici_riscossione(
    *, accounting_type: str | None, accounting_code: str | None, taxonomy: str | None
) -> str:
    """``<tipo>/<codice>`` from the voce's accounting, else ``9/<taxonomy>``, else 'altre entrate'."""
    code = "".join((accounting_code or "").split())
    digit = _ACCOUNTING_DIGIT.get((accounting_type or "").upper())
    if digit and len(code) >= 3:
        return f"{digit}/{code}"[:140]
    compact = "".join((taxonomy or "").split())
    if len(compact) >= 3:
        candidate = compact if _DATI_SPECIFICI.fullmatch(compact) else f"9/{compact}"
        if _DATI_SPECIFICI.fullmatch(candidate[:140]):
            return candidate[:140]
    return DEFAULT_DATI_SPECIFICI


def _text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    return value[:limit] or None


def _subject_id(identifier: str) -> str:
    value = "".join(identifier.split()).upper()
    # stCodiceIdentificativoUnivoco is 2 to 16 characters: foreign or odd ids travel as ANONIMO
    return value if 2 <= len(value) <= 16 else "ANONIMO"


def _add(parent: etree._Element, name: str, value: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{PAY_NS}}}{name}")
    if value is not None:
        element.text = value
    return element


def _add_opt(parent: etree._Element, name: str, value: str | None) -> None:
    if value:
        _add(parent, name, value)


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):.2f}"


def _subject(parent: etree._Element, name: str, suffix: str, subject: RptSubject) -> None:
    s = _add(parent, name)
    uid = _add(s, f"identificativoUnivoco{suffix}")
    _add(uid, "tipoIdentificativoUnivoco", subject.kind if subject.kind in ("F", "G") else "F")
    _add(uid, "codiceIdentificativoUnivoco", _subject_id(subject.identifier))
    _add(s, f"anagrafica{suffix}", _text(subject.name, 70) or "ANONIMO")
    _add_opt(s, f"indirizzo{suffix}", _text(subject.address, 70))
    _add_opt(s, f"civico{suffix}", _text(subject.civic, 16))
    _add_opt(s, f"cap{suffix}", _text(subject.cap, 16))
    _add_opt(s, f"localita{suffix}", _text(subject.locality, 35))
    _add_opt(s, f"provincia{suffix}", _text(subject.province, 35))
    if subject.nation and re.fullmatch(r"[A-Z]{2}", subject.nation):
        _add(s, f"nazione{suffix}", subject.nation)
    if subject.email and len(subject.email) <= 256 and _EMAIL.fullmatch(subject.email):
        _add(s, f"e-mail{suffix}", subject.email)


def build_rpt(data: RptData) -> bytes:
    """The RPT document (PagInf_RPT_RT_6_2_0.xsd) as UTF-8 bytes; RptError when the data cannot make one."""
    if not 1 <= len(data.transfers) <= 5:
        raise RptError(f"an RPT carries 1 to 5 transfers, not {len(data.transfers)}")
    if any(t.amount <= 0 for t in data.transfers):
        raise RptError("every transfer of an RPT must be greater than zero")
    for name, value in (("iuv", data.iuv), ("ccp", data.ccp), ("message_id", data.message_id)):
        if not 1 <= len(value) <= 35:
            raise RptError(f"{name} must be 1 to 35 characters")
    rpt = etree.Element(f"{{{PAY_NS}}}RPT", nsmap={"pay_i": PAY_NS})
    _add(rpt, "versioneOggetto", RPT_VERSION)
    dominio = _add(rpt, "dominio")
    _add(dominio, "identificativoDominio", data.id_dominio)
    _add(dominio, "identificativoStazioneRichiedente", data.id_stazione)
    _add(rpt, "identificativoMessaggioRichiesta", data.message_id)
    # pagoPA writes Italian local time without an offset
    local = data.requested_at.astimezone(ROME).replace(tzinfo=None, microsecond=0)
    _add(rpt, "dataOraMessaggioRichiesta", local.isoformat())
    _add(rpt, "autenticazioneSoggetto", data.authentication)
    if data.payer is not None:
        _subject(rpt, "soggettoVersante", "Versante", data.payer)
    _subject(rpt, "soggettoPagatore", "Pagatore", data.debtor)
    ente = _add(rpt, "enteBeneficiario")
    uid = _add(ente, "identificativoUnivocoBeneficiario")
    _add(uid, "tipoIdentificativoUnivoco", "G")
    _add(uid, "codiceIdentificativoUnivoco", data.id_dominio)
    _add(ente, "denominazioneBeneficiario", _text(data.creditor_name, 70) or data.id_dominio)
    _add_opt(ente, "codiceUnitOperBeneficiario", _text(data.unit_code, 35))
    dv = _add(rpt, "datiVersamento")
    _add(dv, "dataEsecuzionePagamento", data.payment_date.isoformat())
    _add(dv, "importoTotaleDaVersare", _money(data.amount))
    _add(dv, "tipoVersamento", data.payment_type)
    _add(dv, "identificativoUnivocoVersamento", data.iuv)
    _add(dv, "codiceContestoPagamento", data.ccp)
    _add(dv, "firmaRicevuta", "0")
    for t in data.transfers:
        single = _add(dv, "datiSingoloVersamento")
        _add(single, "importoSingoloVersamento", _money(t.amount))
        if t.stamp is None:
            if not t.iban:
                raise RptError("a transfer without a digital stamp needs an IBAN")
            _add(single, "ibanAccredito", t.iban)
            _add_opt(single, "ibanAppoggio", t.support_iban)
        _add(single, "causaleVersamento", _text(t.remittance, 140) or "pagamento")
        if not _DATI_SPECIFICI.fullmatch(t.dati_specifici):
            raise RptError(f"datiSpecificiRiscossione {t.dati_specifici!r} is not <0|1|2|9>/<code>")
        _add(single, "datiSpecificiRiscossione", t.dati_specifici)
        if t.stamp is not None:
            stamp = _add(single, "datiMarcaBolloDigitale")
            _add(stamp, "tipoBollo", t.stamp[0])
            _add(stamp, "hashDocumento", t.stamp[1])
            _add(stamp, "provinciaResidenza", t.stamp[2])
    return etree.tostring(rpt, xml_declaration=True, encoding="UTF-8")


def schema_errors(xml: bytes, schema: etree.XMLSchema) -> list[str]:
    """Violations of the RPT/RT schema by a document (empty when valid)."""
    root = parse_xml(xml)
    if schema.validate(etree.ElementTree(root)):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


# --- reading an RT -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtPayment:
    """One datiSingoloPagamento of an RT."""

    amount: Decimal
    outcome: str | None
    outcome_date: date
    iur: str
    remittance: str
    dati_specifici: str


@dataclass(frozen=True)
class RtData:
    """What an RT says."""

    id_dominio: str
    message_id: str  # identificativoMessaggioRicevuta: the receipt's id
    issued_at: datetime
    request_message_id: str
    psp_id: str
    psp_name: str
    outcome_code: str  # codiceEsitoPagamento: 0 paid, 1 not paid, 2 partly, 3/4 expired
    amount: Decimal
    iuv: str
    ccp: str
    debtor_id: str | None = None
    debtor_name: str | None = None
    payer_id: str | None = None
    payer_name: str | None = None
    payments: tuple[RtPayment, ...] = field(default_factory=tuple)

    @property
    def paid(self) -> bool:
        """Whether money moved (codiceEsitoPagamento 0 or 2)."""
        return self.outcome_code in ("0", "2")


def _child(element: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        if element is None:
            return None
        element = next((c for c in element if isinstance(c.tag, str) and local_name(c) == name), None)
    return element


def _value(element: etree._Element | None, *path: str) -> str | None:
    found = _child(element, *path)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def parse_rt(xml: bytes) -> RtData:
    """An RT document (already valid against the schema) as RtData; RptError if it is not an RT."""
    try:
        root = parse_xml(xml)
    except ValueError as exc:
        raise RptError(f"the RT is not readable XML: {exc}") from exc
    if root.tag != f"{{{PAY_NS}}}RT":
        raise RptError(f"expected an RT, got {root.tag}")
    try:
        return _rt_data(root)
    except (InvalidOperation, ValueError) as exc:  # defence in depth: callers check the schema first
        raise RptError(f"the RT is not readable: {str(exc)[:200]}") from exc


def _amount(text: str | None) -> Decimal:
    """An RT amount; NaN and infinities (which Decimal reads) are not amounts."""
    value = Decimal(text or "0")
    if not value.is_finite():
        raise ValueError(f"amount {text!r} is not a number")
    return value


def _rt_data(root: etree._Element) -> RtData:
    dati = _child(root, "datiPagamento")
    payments = []
    for single in (
        c
        for c in (dati if dati is not None else [])
        if isinstance(c.tag, str) and local_name(c) == "datiSingoloPagamento"
    ):
        payments.append(
            RtPayment(
                amount=_amount(_value(single, "singoloImportoPagato")),
                outcome=_value(single, "esitoSingoloPagamento"),
                outcome_date=date.fromisoformat(_value(single, "dataEsitoSingoloPagamento") or "1970-01-01"),
                iur=_value(single, "identificativoUnivocoRiscossione") or "",
                remittance=_value(single, "causaleVersamento") or "",
                dati_specifici=_value(single, "datiSpecificiRiscossione") or "",
            )
        )
    issued = _value(root, "dataOraMessaggioRicevuta")
    return RtData(
        id_dominio=_value(root, "dominio", "identificativoDominio") or "",
        message_id=_value(root, "identificativoMessaggioRicevuta") or "",
        issued_at=parse_pagopa_datetime(issued) if issued else datetime.now(UTC),
        request_message_id=_value(root, "riferimentoMessaggioRichiesta") or "",
        psp_id=_value(
            root, "istitutoAttestante", "identificativoUnivocoAttestante", "codiceIdentificativoUnivoco"
        )
        or "",
        psp_name=_value(root, "istitutoAttestante", "denominazioneAttestante") or "",
        outcome_code=_value(dati, "codiceEsitoPagamento") or "1",
        amount=_amount(_value(dati, "importoTotalePagato")),
        iuv=_value(dati, "identificativoUnivocoVersamento") or "",
        ccp=_value(dati, "CodiceContestoPagamento") or "",
        debtor_id=_value(
            root, "soggettoPagatore", "identificativoUnivocoPagatore", "codiceIdentificativoUnivoco"
        ),
        debtor_name=_value(root, "soggettoPagatore", "anagraficaPagatore"),
        payer_id=_value(
            root, "soggettoVersante", "identificativoUnivocoVersante", "codiceIdentificativoUnivoco"
        ),
        payer_name=_value(root, "soggettoVersante", "anagraficaVersante"),
        payments=tuple(payments),
    )


def rt_problems(rt: RtData, *, id_dominio: str, iuv: str, ccp: str, amount: Decimal) -> list[str]:
    """Semantic faults of an RT against its header and the attempt it answers (empty when coherent)."""
    out = []
    if (rt.id_dominio, rt.iuv, rt.ccp) != (id_dominio, iuv, ccp):
        out.append(
            f"the RT is for {rt.id_dominio}/{rt.iuv}/{rt.ccp}, the header says {id_dominio}/{iuv}/{ccp}"
        )
    total = sum((p.amount for p in rt.payments), Decimal("0.00"))
    if rt.payments and total != rt.amount:
        out.append(f"importoTotalePagato {rt.amount} differs from the sum of the payments {total}")
    if rt.outcome_code == "0" and rt.amount != amount:
        out.append(f"a full payment of {rt.amount} for an RPT of {amount}")
    if not rt.message_id:
        out.append("identificativoMessaggioRicevuta missing")
    return out


def receipt_from_rt(rt: RtData, *, nav: str, ibans: dict[int, str | None], payload: str) -> ReceiptIn:
    """The receipt an RT stands for, addressed to its EC: every payment credits that EC."""
    transfers = tuple(
        ReceiptTransfer(
            id_transfer=index,
            amount=p.amount,
            fiscal_code=rt.id_dominio,
            iban=ibans.get(index),
            remittance=p.remittance or None,
            category=p.dati_specifici or None,
        )
        for index, p in enumerate(rt.payments, start=1)
    )
    paid_on = next((p.outcome_date for p in rt.payments), None)
    return ReceiptIn(
        receipt_id=rt.message_id,
        id_pa=rt.id_dominio,
        fiscal_code=rt.id_dominio,
        notice_number=nav,
        iuv=rt.iuv,
        outcome="OK" if rt.paid else "KO",
        amount=rt.amount,
        transfers=transfers,
        debtor_id=rt.debtor_id,
        debtor_name=rt.debtor_name,
        payer_id=rt.payer_id,
        payer_name=rt.payer_name,
        psp_id=rt.psp_id[:35] or None,
        psp_name=rt.psp_name or None,
        payment_method=None,
        payment_at=rt.issued_at,
        application_date=paid_on,
        standin=False,
        payload=payload,
        payload_format="XML",
    )
