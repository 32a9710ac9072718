"""An EC's treasury account journal written from credits: OPI Giornale di Cassa 1.8, camt.053.001.02, CBI RH.

The layouts follow the synthetic day in ``<treasury_specs_dir>/synthetic/``; everything the credits do not
say (bank codes, creation time, document numbers) is derived from the arguments, so the same call always
gives the same bytes. Choices worth knowing:

- OPI: pagoPA credits are ``SOSPESO ENTRATA`` movements (``ESEGUITO``; a reversal is ``STORNATO``), one page.
  The 1.8 XSD makes an enveloped ``ds:Signature`` mandatory; like the synthetic sample we write a dummy,
  schema-valid signature (a real treasury bank signs with XAdES).
- camt.053: one ``Ntry`` per credit, ``RmtInf/Ustrd`` cut into 140-character pieces; a reversal is a ``DBIT``
  entry with ``RvslInd`` true and family ``RRTN``.
- CBI RH: 120-character records ``RH``/``61``/``62``/``63``(YYY, ID1, RI1, RI2)/``64``/``EF``, CRLF, Latin-1
  (characters outside it become ``?``). The movement number of ``62``/``63`` has three digits, so every 999
  movements start a new statement (``61`` .. ``64``) whose opening balance is the previous closing one.
  CBI reason 48 for credits, 26 for reversals (26 is a placeholder, as in the sample). The ordering party is
  cut to 40 characters; the remittance must fit RI1 + RI2 (208 characters); the YYY order date is the value
  date; the EC's SIA code is ``C`` + the last four digits of its fiscal code.

The remittance is written verbatim in every format (a reversal's text, e.g. ``STORNO /PUR/...``, is the
caller's). A missing end-to-end id is written as ``NOTPROVIDED``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from lxml import etree

OPI_XSD = "opi-giornale-di-cassa/xsd/OPI_GIORNALE_DI_CASSA_V_1_8.xsd"
CAMT053_XSD = "camt/xsd/camt.053.001.02.xsd"
CAMT053_NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"
NOT_PROVIDED = "NOTPROVIDED"
USTRD_MAX = 140
CBI_RECORD_LENGTH = 120
CBI_REMITTANCE_MAX = 208
CBI_MOVEMENTS_PER_STATEMENT = 999
CBI_BANK_REF_MAX = 16
CBI_REASON_CREDIT = "48"
CBI_REASON_REVERSAL = "26"
MAX_AMOUNT = Decimal("999999999999.99")  # CBI amount field: 12 integer digits

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IT_IBAN = re.compile(r"IT(\d{2})([A-Z])(\d{5})(\d{5})([0-9A-Z]{12})")
_FISCAL_CODE = re.compile(r"[A-Z0-9]{11,16}")
_MAX_PROBLEMS_SHOWN = 20


class JournalFormat(StrEnum):
    """The treasury journal formats the sandbox writes."""

    OPI_1_8 = "opi"
    CAMT053 = "camt053"
    CBI_RH = "cbi"


class JournalSpecError(ValueError):
    """Arguments that would not give a valid journal; ``problems`` lists every reason."""

    def __init__(self, fmt: str, problems: Sequence[str]) -> None:
        self.fmt = fmt
        self.problems = tuple(problems)
        shown = "; ".join(self.problems[:_MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - _MAX_PROBLEMS_SHOWN
        suffix = f"; ... and {more} more" if more > 0 else ""
        super().__init__(f"invalid {fmt} journal: {shown}{suffix}")


class JournalValidationError(ValueError):
    """A journal that its schema (OPI, camt) or record layout (CBI) rejects; ``errors`` lists why."""

    def __init__(self, fmt: str, errors: Sequence[str]) -> None:
        self.fmt = fmt
        self.errors = tuple(errors)
        listing = "\n  ".join(self.errors[:_MAX_PROBLEMS_SHOWN])
        super().__init__(f"invalid {fmt} journal ({len(self.errors)} errors):\n  {listing}")


@dataclass(frozen=True)
class Credit:
    """One movement on the EC's account: a credit, or (``reversal``) the debit that reverses one."""

    amount: Decimal
    value_date: date
    booking_date: date
    remittance: str
    ordering_party: str
    end_to_end_id: str | None
    bank_reference: str
    bank_movement_id: str
    reversal: bool = False
    # OPI numero_documento: treasuries number sospesi through the esercizio; None numbers them per journal
    document_number: int | None = None


class _Account(NamedTuple):
    iban: str
    check: str
    cin: str
    abi: str
    cab: str
    number: str


def _parse_iban(iban: str) -> _Account | None:
    match = _IT_IBAN.fullmatch(iban) if isinstance(iban, str) else None
    if match is None:
        return None
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    if int(digits) % 97 != 1:
        return None
    return _Account(iban, *match.groups())


def _is_plain_date(value: object) -> bool:
    return isinstance(value, date) and not isinstance(value, datetime)


def _text_problem(name: str, value: object, high: int | None = None) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"{name} must be a non-empty string, got {value!r}"
    if _CONTROL.search(value):
        return f"{name} must not contain control characters, got {value!r}"
    if high is not None and len(value) > high:
        return f"{name} must be at most {high} characters, got {len(value)} ({value!r})"
    return None


def _amount_problem(name: str, value: object, *, positive: bool) -> str | None:
    if not isinstance(value, Decimal) or not value.is_finite():
        return f"{name} must be a finite Decimal, got {value!r}"
    if value != value.quantize(_CENT):
        return f"{name} must have at most two decimal places, got {value}"
    if positive and value <= 0:
        return f"{name} must be positive (a reversal is Credit(reversal=True)), got {value}"
    if abs(value) > MAX_AMOUNT:
        return f"{name} must be at most {MAX_AMOUNT} in absolute value, got {value}"
    return None


def journal_problems(
    *,
    fmt: JournalFormat,
    account_iban: str,
    ec_fiscal_code: str,
    ec_name: str,
    day: date,
    sequence: int,
    credits: Sequence[Credit],
    opening_balance: Decimal = _ZERO,
) -> list[str]:
    """Every reason why these arguments would not give a valid journal (empty if none)."""
    problems: list[str] = []
    if _parse_iban(account_iban) is None:
        problems.append(
            f"account_iban must be a valid Italian IBAN (27 characters, check digits), got {account_iban!r}"
        )
    if not isinstance(ec_fiscal_code, str) or not _FISCAL_CODE.fullmatch(ec_fiscal_code):
        problems.append(f"ec_fiscal_code must match [A-Z0-9]{{11,16}}, got {ec_fiscal_code!r}")
    problem = _text_problem("ec_name", ec_name, 140)
    if problem:
        problems.append(problem)
    if not _is_plain_date(day) or not 1999 <= day.year <= 2099:
        problems.append(f"day must be a date between 1999 and 2099, got {day!r}")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence <= 999:
        problems.append(f"sequence must be 1..999, got {sequence!r}")
    problem = _amount_problem("opening_balance", opening_balance, positive=False)
    if problem:
        problems.append(problem)
    cbi = fmt == JournalFormat.CBI_RH
    seen: set[str] = set()
    balance = opening_balance if not problem else _ZERO
    for n, credit in enumerate(credits, start=1):
        where = f"credit {n}"
        checks = [
            _amount_problem(f"{where} amount", credit.amount, positive=True),
            _text_problem(f"{where} remittance", credit.remittance, CBI_REMITTANCE_MAX if cbi else None),
            _text_problem(f"{where} ordering_party", credit.ordering_party, 140),
            _text_problem(f"{where} bank_reference", credit.bank_reference, 35),
            _text_problem(
                f"{where} bank_movement_id", credit.bank_movement_id, CBI_BANK_REF_MAX if cbi else 35
            ),
        ]
        if credit.end_to_end_id is not None:
            checks.append(_text_problem(f"{where} end_to_end_id", credit.end_to_end_id, 35))
        problems.extend(p for p in checks if p)
        if not _is_plain_date(credit.value_date) or not _is_plain_date(credit.booking_date):
            problems.append(f"{where} value_date and booking_date must be dates")
        if not isinstance(credit.reversal, bool):
            problems.append(f"{where} reversal must be a bool, got {credit.reversal!r}")
        if credit.bank_movement_id in seen:
            problems.append(
                f"{where} bank_movement_id {credit.bank_movement_id!r} is not unique in the journal"
            )
        seen.add(credit.bank_movement_id)
        if not checks[0]:
            balance += -credit.amount if credit.reversal else credit.amount
            if abs(balance) > MAX_AMOUNT:
                problems.append(f"running balance exceeds {MAX_AMOUNT} at {where}")
    return problems


def _x(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _totals(credits: Sequence[Credit]) -> tuple[int, Decimal, int, Decimal]:
    n_cr = n_db = 0
    sum_cr = sum_db = _ZERO
    for c in credits:
        if c.reversal:
            n_db += 1
            sum_db += c.amount
        else:
            n_cr += 1
            sum_cr += c.amount
    return n_cr, sum_cr, n_db, sum_db


def _e2e(credit: Credit) -> str:
    return credit.end_to_end_id if credit.end_to_end_id is not None else NOT_PROVIDED


# --- OPI Giornale di Cassa 1.8 --------------------------------------------------------------------

_OPI_SIGNATURE = """  <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
    <!-- placeholder: a real Giornale di Cassa is XAdES-signed by the treasury bank -->
    <ds:SignedInfo>
      <ds:CanonicalizationMethod Algorithm="http://www.w3.org/2006/12/xml-c14n11"/>
      <ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
      <ds:Reference URI="">
        <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
        <ds:DigestValue>AAAA</ds:DigestValue>
      </ds:Reference>
    </ds:SignedInfo>
    <ds:SignatureValue>AAAA</ds:SignatureValue>
  </ds:Signature>
"""


def _iter_opi(
    account: _Account,
    ec_fiscal_code: str,
    ec_name: str,
    day: date,
    sequence: int,
    credits: Sequence[Credit],
    opening: Decimal,
) -> Iterator[str]:
    created = day + timedelta(days=1)
    ymd = f"{day:%Y%m%d}"
    _, sum_cr, _, sum_db = _totals(credits)
    closing = opening + sum_cr - sum_db
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<flusso_giornale_di_cassa>\n"
        "  <testata_messaggio>\n"
        f"    <codice_ABI_BT>{account.abi}</codice_ABI_BT>\n"
        f"    <data_ora_creazione_flusso>{created.isoformat()}T02:30:00</data_ora_creazione_flusso>\n"
        f"    <codice_ente>C{ec_fiscal_code[-5:]}</codice_ente>\n"
        f"    <descrizione_ente>{_x(ec_name)}</descrizione_ente>\n"
        "    <codice_istat_ente>000000000</codice_istat_ente>\n"
        f"    <codice_fiscale_ente>{ec_fiscal_code}</codice_fiscale_ente>\n"
        "    <codice_tramite_ente>A2A-00000001</codice_tramite_ente>\n"
        "    <codice_tramite_BT>A2A-00000002</codice_tramite_BT>\n"
        "    <codice_ente_BT>0000001</codice_ente_BT>\n"
        "  </testata_messaggio>\n"
        f"  <identificativo_flusso_BT>GDC-{created:%Y%m%d}{ec_fiscal_code}{ymd}#{sequence:03d}#001"
        "</identificativo_flusso_BT>\n"
        "  <pagina>1</pagina>\n"
        "  <pagine_totali>1</pagine_totali>\n"
        f"  <esercizio>{day.year}</esercizio>\n"
        f"  <data_riferimento_GdC>{day.isoformat()}</data_riferimento_GdC>\n"
        "  <informazioni_conto_evidenza>\n"
        f"    <conto_evidenza>{account.number}</conto_evidenza>\n"
        "    <descrizione_conto_evidenza>CONTO ORDINARIO</descrizione_conto_evidenza>\n"
    )
    for n, c in enumerate(credits, start=1):
        booked = c.booking_date.isoformat()
        number = n if c.document_number is None else c.document_number
        yield (
            "      <movimento_conto_evidenza>\n"
            f"        <identificativo_flusso>GDC{ymd}{n:04d}</identificativo_flusso>\n"
            f"        <numero_movimento>{n}</numero_movimento>\n"
            "        <tipo_movimento>ENTRATA</tipo_movimento>\n"
            "        <tipo_documento>SOSPESO ENTRATA</tipo_documento>\n"
            f"        <tipo_operazione>{'STORNATO' if c.reversal else 'ESEGUITO'}</tipo_operazione>\n"
            f"        <numero_documento>{number}</numero_documento>\n"
            "        <sospeso_da_regolarizzare>\n"
            f"          <data_effettiva_sospeso>{booked}</data_effettiva_sospeso>\n"
            "          <codice_gestionale_provvisorio>0000099999</codice_gestionale_provvisorio>\n"
            "        </sospeso_da_regolarizzare>\n"
            "        <progressivo_documento>0</progressivo_documento>\n"
            f"        <importo>{_money(c.amount)}</importo>\n"
            f"        <numero_bolletta_quietanza>{number}</numero_bolletta_quietanza>\n"
            f"        <data_movimento>{booked}</data_movimento>\n"
            f"        <data_movimento_siope>{booked}</data_movimento_siope>\n"
            f"        <data_valuta_ente>{c.value_date.isoformat()}</data_valuta_ente>\n"
            "        <tipo_esecuzione>CASSA</tipo_esecuzione>\n"
            f"        <codice_riferimento_operazione>{_x(c.bank_reference)}</codice_riferimento_operazione>\n"
            f"        <end_to_end_id>{_x(_e2e(c))}</end_to_end_id>\n"
            f"        <codice_riferimento_interno>{_x(c.bank_movement_id)}</codice_riferimento_interno>\n"
            "        <tipo_contabilita>INFRUTTIFERO</tipo_contabilita>\n"
            "        <destinazione>LIBERA</destinazione>\n"
            "        <assoggettamento_bollo>ESENTE BOLLO</assoggettamento_bollo>\n"
            "        <assoggettamento_spese>ESENTE SPESE</assoggettamento_spese>\n"
            "        <cliente>\n"
            f"          <anagrafica_cliente>{_x(c.ordering_party)}</anagrafica_cliente>\n"
            "        </cliente>\n"
            f"        <causale>{_x(c.remittance)}</causale>\n"
            "      </movimento_conto_evidenza>\n"
        )
    yield (
        f"    <saldo_precedente_conto_evidenza>{_money(opening)}</saldo_precedente_conto_evidenza>\n"
        f"    <totale_entrate_conto_evidenza>{_money(sum_cr)}</totale_entrate_conto_evidenza>\n"
        f"    <totale_uscite_conto_evidenza>{_money(sum_db)}</totale_uscite_conto_evidenza>\n"
        f"    <saldo_finale_conto_evidenza>{_money(closing)}</saldo_finale_conto_evidenza>\n"
        "  </informazioni_conto_evidenza>\n"
    )
    yield _OPI_SIGNATURE
    yield "</flusso_giornale_di_cassa>\n"


# --- camt.053.001.02 ------------------------------------------------------------------------------


def _ustrd(remittance: str) -> str:
    return "".join(
        f"<Ustrd>{_x(remittance[i : i + USTRD_MAX])}</Ustrd>" for i in range(0, len(remittance), USTRD_MAX)
    )


def _balance(code: str, amount: Decimal, day: date) -> str:
    sign = "DBIT" if amount < 0 else "CRDT"
    return (
        "      <Bal>\n"
        f"        <Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>\n"
        f'        <Amt Ccy="EUR">{_money(abs(amount))}</Amt><CdtDbtInd>{sign}</CdtDbtInd>\n'
        f"        <Dt><Dt>{day.isoformat()}</Dt></Dt>\n"
        "      </Bal>\n"
    )


def _iter_camt(
    account: _Account, ec_name: str, day: date, sequence: int, credits: Sequence[Credit], opening: Decimal
) -> Iterator[str]:
    created = f"{day + timedelta(days=1)}T06:00:00"
    n_cr, sum_cr, n_db, sum_db = _totals(credits)
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Document xmlns="{CAMT053_NAMESPACE}">\n'
        "  <BkToCstmrStmt>\n"
        "    <GrpHdr>\n"
        f"      <MsgId>STMT-{day:%Y%m%d}-{sequence:04d}</MsgId>\n"
        f"      <CreDtTm>{created}</CreDtTm>\n"
        "    </GrpHdr>\n"
        "    <Stmt>\n"
        f"      <Id>{day:%Y%m%d}-{account.number}</Id>\n"
        f"      <ElctrncSeqNb>{sequence}</ElctrncSeqNb>\n"
        f"      <CreDtTm>{created}</CreDtTm>\n"
        f"      <FrToDt><FrDtTm>{day}T00:00:00</FrDtTm><ToDtTm>{day}T23:59:59</ToDtTm></FrToDt>\n"
        "      <Acct>\n"
        f"        <Id><IBAN>{account.iban}</IBAN></Id>\n"
        "        <Ccy>EUR</Ccy>\n"
        f"        <Ownr><Nm>{_x(ec_name)}</Nm></Ownr>\n"
        "      </Acct>\n"
        + _balance("OPBD", opening, day)
        + _balance("CLBD", opening + sum_cr - sum_db, day)
        + "      <TxsSummry>\n"
        f"        <TtlCdtNtries><NbOfNtries>{n_cr}</NbOfNtries><Sum>{_money(sum_cr)}</Sum></TtlCdtNtries>\n"
        f"        <TtlDbtNtries><NbOfNtries>{n_db}</NbOfNtries><Sum>{_money(sum_db)}</Sum></TtlDbtNtries>\n"
        "      </TxsSummry>\n"
    )
    for n, c in enumerate(credits, start=1):
        amount = _money(c.amount)
        ref = _x(c.bank_movement_id)
        if c.reversal:
            direction, reversal, family, party = "DBIT", "        <RvslInd>true</RvslInd>\n", "RRTN", "Cdtr"
        else:
            direction, reversal, family, party = "CRDT", "", "RCDT", "Dbtr"
        yield (
            "      <Ntry>\n"
            f"        <NtryRef>{n}</NtryRef>\n"
            f'        <Amt Ccy="EUR">{amount}</Amt>\n'
            f"        <CdtDbtInd>{direction}</CdtDbtInd>\n"
            f"{reversal}"
            "        <Sts>BOOK</Sts>\n"
            f"        <BookgDt><Dt>{c.booking_date.isoformat()}</Dt></BookgDt>\n"
            f"        <ValDt><Dt>{c.value_date.isoformat()}</Dt></ValDt>\n"
            f"        <AcctSvcrRef>{ref}</AcctSvcrRef>\n"
            "        <BkTxCd>\n"
            f"          <Domn><Cd>PMNT</Cd><Fmly><Cd>{family}</Cd><SubFmlyCd>ESCT</SubFmlyCd></Fmly></Domn>\n"
            "          <Prtry><Cd>48</Cd><Issr>ABI</Issr></Prtry>\n"
            "        </BkTxCd>\n"
            "        <NtryDtls>\n"
            "          <TxDtls>\n"
            "            <Refs>\n"
            f"              <AcctSvcrRef>{ref}</AcctSvcrRef>\n"
            f"              <EndToEndId>{_x(_e2e(c))}</EndToEndId>\n"
            f"              <TxId>{_x(c.bank_reference)}</TxId>\n"
            "            </Refs>\n"
            f'            <AmtDtls><TxAmt><Amt Ccy="EUR">{amount}</Amt></TxAmt></AmtDtls>\n'
            f"            <RltdPties><{party}><Nm>{_x(c.ordering_party)}</Nm></{party}></RltdPties>\n"
            f"            <RmtInf>{_ustrd(c.remittance)}</RmtInf>\n"
            "          </TxDtls>\n"
            "        </NtryDtls>\n"
            "      </Ntry>\n"
        )
    yield "    </Stmt>\n  </BkToCstmrStmt>\n</Document>\n"


# --- CBI RH ---------------------------------------------------------------------------------------


def _f(text: str, width: int) -> str:
    return text[:width].ljust(width)


def _cbi_amount(value: Decimal) -> str:
    whole, cents = f"{abs(value):.2f}".split(".")
    return f"{whole.zfill(12)},{cents}"


def _sign(value: Decimal) -> str:
    return "D" if value < 0 else "C"


@lru_cache(maxsize=1024)
def _ddmmyy(value: date) -> str:
    return f"{value:%d%m%y}"


def _iter_cbi(
    account: _Account,
    ec_fiscal_code: str,
    day: date,
    sequence: int,
    credits: Sequence[Credit],
    opening: Decimal,
) -> Iterator[str]:
    sia = f"C{ec_fiscal_code[-4:]}"  # synthetic SIA code of the EC (5 characters)
    support = _f(f"RH-{day:%Y%m%d}-{sequence:04d}", 20)
    head = f"{account.abi}{sia}{_ddmmyy(day + timedelta(days=1))}{support}"
    yield f" RH{head}".ljust(CBI_RECORD_LENGTH)
    records = 2
    chunks = [
        credits[i : i + CBI_MOVEMENTS_PER_STATEMENT]
        for i in range(0, len(credits), CBI_MOVEMENTS_PER_STATEMENT)
    ]
    balance = opening
    accounting = _ddmmyy(day)
    for stmt, chunk in enumerate(chunks or [credits], start=1):
        progr = f"{stmt:07d}"
        yield (
            f" 61{progr}{'':13}{account.abi}{'':5}{_f('C/C TESORERIA', 16)}{'':2}"
            f"{account.cin}{account.abi}{account.cab}{account.number}EUR{accounting}"
            f"{_sign(balance)}{_cbi_amount(balance)}IT{account.check}{'':17}"
        )
        records += 2
        for m, c in enumerate(chunk, start=1):
            key = f"{progr}{m:03d}"
            if c.reversal:
                sign, reason, text = "D", CBI_REASON_REVERSAL, "STORNO BONIFICO"
                balance -= c.amount
            else:
                sign, reason, text = "C", CBI_REASON_CREDIT, "BONIFICO SEPA A VS FAVORE"
                balance += c.amount
            yield (
                f" 62{key}{_ddmmyy(c.value_date)}{_ddmmyy(c.booking_date)}{sign}{_cbi_amount(c.amount)}"
                f"{reason}{'':2}{'':16}{_f(c.bank_movement_id, 16)}{'':9}{_f(text, 34)}"
            )
            yield (f" 63{key}YYY{c.value_date:%d%m%Y}{'':16}{_f(c.ordering_party, 40)}{_f('IT', 40)}")
            yield f" 63{key}ID1{_f(c.bank_reference, 35)}{_f(_e2e(c), 35)}{'':34}"
            yield f" 63{key}RI1{_f(c.remittance[:104], 104)}"
            records += 4
            if len(c.remittance) > 104:
                yield f" 63{key}RI2{_f(c.remittance[104:208], 104)}"
                records += 1
        amount = f"{_sign(balance)}{_cbi_amount(balance)}"
        yield f" 64{progr}EUR{accounting}{amount}{amount}{'':69}"
    yield f" EF{head}{'':6}{len(chunks or [credits]):07d}{'':30}{records:07d}".ljust(CBI_RECORD_LENGTH)


# --- public API -----------------------------------------------------------------------------------


def iter_journal(
    *,
    fmt: JournalFormat | str,
    account_iban: str,
    ec_fiscal_code: str,
    ec_name: str,
    day: date,
    sequence: int,
    credits: Sequence[Credit],
    opening_balance: Decimal = _ZERO,
) -> Iterator[bytes]:
    """The journal in encoded chunks, for writing a large file without holding it twice in memory."""
    fmt = JournalFormat(fmt)
    problems = journal_problems(
        fmt=fmt,
        account_iban=account_iban,
        ec_fiscal_code=ec_fiscal_code,
        ec_name=ec_name,
        day=day,
        sequence=sequence,
        credits=credits,
        opening_balance=opening_balance,
    )
    if problems:
        raise JournalSpecError(fmt.value, problems)
    account = _parse_iban(account_iban)
    assert account is not None  # checked above
    if fmt == JournalFormat.CBI_RH:
        batch: list[str] = []
        for record in _iter_cbi(account, ec_fiscal_code, day, sequence, credits, opening_balance):
            if len(record) != CBI_RECORD_LENGTH:  # a layout bug, never bad input
                raise AssertionError(f"CBI record of {len(record)} characters: {record!r}")
            batch.append(record)
            if len(batch) == 1024:
                yield ("\r\n".join(batch) + "\r\n").encode("latin-1", errors="replace")
                batch = []
        if batch:
            yield ("\r\n".join(batch) + "\r\n").encode("latin-1", errors="replace")
        return
    if fmt == JournalFormat.OPI_1_8:
        parts = _iter_opi(account, ec_fiscal_code, ec_name, day, sequence, credits, opening_balance)
    else:
        parts = _iter_camt(account, ec_name, day, sequence, credits, opening_balance)
    for part in parts:
        yield part.encode("utf-8")


def build_journal(
    *,
    fmt: JournalFormat | str,
    account_iban: str,
    ec_fiscal_code: str,
    ec_name: str,
    day: date,
    sequence: int,
    credits: Sequence[Credit],
    opening_balance: Decimal = _ZERO,
) -> bytes:
    """The whole journal of ``day`` (the ``sequence``-th file of that day) in the given format."""
    return b"".join(
        iter_journal(
            fmt=fmt,
            account_iban=account_iban,
            ec_fiscal_code=ec_fiscal_code,
            ec_name=ec_name,
            day=day,
            sequence=sequence,
            credits=credits,
            opening_balance=opening_balance,
        )
    )


def journal_filename(*, fmt: JournalFormat | str, ec_fiscal_code: str, day: date, sequence: int) -> str:
    """The file name the treasury bank gives the journal, e.g. ``GDC_01234567890_20240726_001.xml``."""
    fmt = JournalFormat(fmt)
    stem = {JournalFormat.OPI_1_8: "GDC", JournalFormat.CAMT053: "CAMT053", JournalFormat.CBI_RH: "RH"}[fmt]
    ext = "txt" if fmt == JournalFormat.CBI_RH else "xml"
    return f"{stem}_{ec_fiscal_code}_{day:%Y%m%d}_{sequence:03d}.{ext}"


@lru_cache(maxsize=4)
def _schema(path: str) -> etree.XMLSchema:
    # Loaded from the file path so the XSD's relative includes resolve.
    return etree.XMLSchema(etree.parse(path))


def journal_xsd(fmt: JournalFormat | str) -> Path:
    """Path of the schema of an XML journal format in the configured treasury specs folder."""
    from models.settings import get_settings

    relative = {JournalFormat.OPI_1_8: OPI_XSD, JournalFormat.CAMT053: CAMT053_XSD}[JournalFormat(fmt)]
    return get_settings().treasury_specs_dir / relative


def _cbi_errors(data: bytes) -> list[str]:
    errors: list[str] = []
    if not data.endswith(b"\r\n"):
        errors.append("the file must end with CRLF")
    lines = data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n")
    for n, line in enumerate(lines, start=1):
        if len(line) != CBI_RECORD_LENGTH:
            errors.append(f"record {n} has {len(line)} characters, not {CBI_RECORD_LENGTH}")
    if not lines or not lines[0].startswith(b" RH"):
        errors.append("the first record must be RH")
    if not lines or not lines[-1].startswith(b" EF"):
        errors.append("the last record must be EF")
    elif lines[-1][82:89] != f"{len(lines):07d}".encode():
        errors.append(f"EF counts {lines[-1][82:89]!r} records, the file has {len(lines)}")
    return errors


def validate_journal(data: bytes, *, fmt: JournalFormat | str, xsd_path: Path | None = None) -> None:
    """Raise JournalValidationError unless the journal is valid (XSD for OPI/camt, record layout for CBI)."""
    fmt = JournalFormat(fmt)
    if fmt == JournalFormat.CBI_RH:
        errors = _cbi_errors(data)
        if errors:
            raise JournalValidationError(fmt.value, errors)
        return
    from rules.xmlsafe import parse_xml

    try:
        root = parse_xml(data)
    except ValueError as exc:
        raise JournalValidationError(fmt.value, [str(exc)]) from exc
    schema = _schema(str(xsd_path if xsd_path is not None else journal_xsd(fmt)))
    if not schema.validate(root.getroottree()):
        raise JournalValidationError(fmt.value, [f"line {e.line}: {e.message}" for e in schema.error_log])
