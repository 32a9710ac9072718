"""Reporting flows (FR): streaming parse of FlussoRiversamento, the ingestion checks (GovPay codes), linking.

Pure functions and small value classes, no I/O beyond the stream handed in. The checks of DOMAIN §8:

====== ===================================================== ======
code   meaning                                               level
====== ===================================================== ======
007101 the line's payment is unknown                         line
007102 the line matches several payments                     line
007104 the line's amount differs from the paid amount        line
007106 the sum of the lines differs from the header total    flow
007107 the number of lines differs from the header count     flow
007110 unknown outcome code                                  line
007111 "no RPT" line (outcome 8/9) of an unknown debt        line
007115 the same (IUV, IUR, index) twice in the flow          flow (and the repeated line)
007116 the flow's EC is not the EC it was downloaded for     flow
DOPPI  the payment was already reported by another flow      line (pagoPA's label for a double report)
====== ===================================================== ======

A flow with a flow-level anomaly is ANOMALA. Lines of IUVs outside the EC's IUV space that match nothing we
know are ALTRO_INTERMEDIARIO (another broker's payments) and are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import IO, Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from lxml import etree

from models.reporting import FlowState, LineState
from rules.identifiers import check_digits, is_valid_rf
from rules.xmlsafe import MalformedXMLError, UnsafeXMLError, iterparse_xml

NAMESPACE = "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"
ROOT = "FlussoRiversamento"
LINE = "datiSingoliPagamenti"
# Outcome codes of FlussoRiversamento 1.0.4 (0, 3, 9) and 1.0.5 (0, 4, 8, 9), and their FdR REST names.
PAY_STATUS: dict[int, str] = {0: "EXECUTED", 3: "REVOKED", 4: "STAND_IN", 8: "STAND_IN_NO_RPT", 9: "NO_RPT"}
OUTCOME_OF_STATUS: dict[str, int] = {v: k for k, v in PAY_STATUS.items()}
REVOKED = 3
NO_RPT_OUTCOMES = frozenset({8, 9})
UNKNOWN_OUTCOME_VALUE = -1  # stored for an outcome code we do not know (the raw code is in the anomaly)

PAYMENT_UNKNOWN = "007101"
SEVERAL_PAYMENTS = "007102"
AMOUNT_MISMATCH = "007104"
TOTAL_MISMATCH = "007106"
COUNT_MISMATCH = "007107"
UNKNOWN_OUTCOME = "007110"
NO_RPT_UNKNOWN_DEBT = "007111"
DUPLICATE_LINE = "007115"
WRONG_EC = "007116"
ALREADY_REPORTED = "DOPPI"
FLOW_LEVEL = frozenset({TOTAL_MISMATCH, COUNT_MISMATCH, DUPLICATE_LINE, WRONG_EC})

_ROME = ZoneInfo("Europe/Rome")
_CENT = Decimal("0.01")
_DIGITS = re.compile(r"[0-9]+")
_MAX_TEXT = 35
_MAX_DIGITS = 15  # integer digits of a count or amount: far above any real flow, within Decimal's precision


# --- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One finding of the checks: a GovPay code and a sentence for operators."""

    code: str
    description: str

    def as_json(self) -> dict[str, str]:
        """GovPay's {codice, descrizione} shape."""
        return {"codice": self.code, "descrizione": self.description}


@dataclass(frozen=True, slots=True)
class FlowHeader:
    """What a flow says about itself (both protocols)."""

    id_flusso: str
    psp_id: str
    ec: str
    total_count: int
    total_amount: Decimal
    flow_at: datetime | None = None
    settlement_ref: str | None = None
    settlement_date: date | None = None
    psp_name: str | None = None
    bic: str | None = None
    ec_name: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class FlowLine:
    """One payment line; ``outcome`` is None when the code is not one we know (``outcome_raw`` keeps it)."""

    index: int
    iuv: str
    iur: str
    transfer_index: int
    amount: Decimal
    outcome: int | None
    outcome_raw: str
    pay_date: date | None


class FlowFormatError(ValueError):
    """A document that is not a readable FlussoRiversamento; ``kind`` says why, ``line`` where."""

    MALFORMED = "malformed"
    UNSAFE = "unsafe"
    NOT_A_FLOW = "not_a_flow"
    INVALID = "invalid"

    def __init__(self, message: str, *, kind: str, line: int | None = None) -> None:
        self.kind, self.line, self.reason = kind, line, message
        super().__init__(message if line is None else f"{message} (line {line})")


# --- parsing --------------------------------------------------------------------------------------


def outcome_of(raw: str | None) -> int | None:
    """The outcome code as a known integer, or None (unknown codes are anomaly 007110, not parse errors)."""
    if raw is None:
        return None
    text = raw.strip()
    if text in OUTCOME_OF_STATUS:
        return OUTCOME_OF_STATUS[text]
    if _DIGITS.fullmatch(text) and int(text) in PAY_STATUS:
        return int(text)
    return None


def _local(tag: Any) -> tuple[str | None, str]:
    if not isinstance(tag, str):
        return None, ""
    qname = etree.QName(tag)
    return qname.namespace, qname.localname


def _text(element: etree._Element, path: str, *, name: str, required: bool = True) -> str | None:
    value = element.findtext(path, namespaces={"p": NAMESPACE})
    value = value.strip() if value is not None else None
    if not value:
        if required:
            raise FlowFormatError(f"{name} missing", kind=FlowFormatError.INVALID, line=element.sourceline)
        return None
    return value


def _id(value: str | None, *, name: str, line: int | None) -> str:
    if value is None or len(value) > _MAX_TEXT:
        raise FlowFormatError(
            f"{name} must be 1..{_MAX_TEXT} characters", kind=FlowFormatError.INVALID, line=line
        )
    return value


def _shown(value: str | None) -> str:
    """A value quoted for an error message, cut short: a hostile document may put megabytes in a field."""
    return repr(value if value is None or len(value) <= 40 else value[:40] + "…")


def _amount(value: str | None, *, name: str, line: int | None) -> Decimal:
    try:
        amount = Decimal(value or "")
    except InvalidOperation:
        amount = Decimal("NaN")
    # beyond 10^15 quantize itself fails (and no flow carries such sums): refused like any other non-amount
    if not amount.is_finite() or amount.adjusted() >= _MAX_DIGITS or amount != amount.quantize(_CENT):
        raise FlowFormatError(
            f"{name} {_shown(value)} is not an amount with two decimals",
            kind=FlowFormatError.INVALID,
            line=line,
        )
    return amount.quantize(_CENT)


def _date(value: str | None, *, name: str, line: int | None) -> date:
    try:
        return date.fromisoformat((value or "")[:10])
    except ValueError:
        raise FlowFormatError(
            f"{name} {_shown(value)} is not a date", kind=FlowFormatError.INVALID, line=line
        ) from None


def local_datetime(value: str | None) -> datetime | None:
    """``dataOraFlusso`` as aware UTC: without an offset it is Italian local time, as the Node writes it."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_ROME)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved across midnight
        return None


def _int(value: str | None, *, name: str, line: int | None, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if value is None or not _DIGITS.fullmatch(value) or len(value.lstrip("0")) > _MAX_DIGITS:
        raise FlowFormatError(
            f"{name} {_shown(value)} is not a number", kind=FlowFormatError.INVALID, line=line
        )
    return int(value)


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


_LINE_Q = _q(LINE)
_HEADER_FIELDS = (
    "versioneOggetto",
    "identificativoFlusso",
    "dataOraFlusso",
    "identificativoUnivocoRegolamento",
    "dataRegolamento",
    "istitutoMittente",
    "codiceBicBancaDiRiversamento",
    "istitutoRicevente",
    "numeroTotalePagamenti",
    "importoTotalePagamenti",
)
_HEADER_Q = {_q(name): name for name in _HEADER_FIELDS}
_LINE_FIELDS = {
    _q(name): name
    for name in (
        "identificativoUnivocoVersamento",
        "identificativoUnivocoRiscossione",
        "indiceDatiSingoloPagamento",
        "singoloImportoPagato",
        "codiceEsitoSingoloPagamento",
        "dataEsitoSingoloPagamento",
    )
}


def _line(element: etree._Element, index: int) -> FlowLine:
    where = element.sourceline
    values: dict[str, str] = {}
    for child in element:
        name = _LINE_FIELDS.get(child.tag)  # type: ignore[call-overload]
        if name is not None and child.text:
            values[name] = child.text.strip()

    def need(name: str) -> str:
        value = values.get(name)
        if not value:
            raise FlowFormatError(f"{name} missing", kind=FlowFormatError.INVALID, line=where)
        return value

    transfer_index = _int(
        values.get("indiceDatiSingoloPagamento") or None,
        name="indiceDatiSingoloPagamento",
        line=where,
        default=1,
    )
    if transfer_index < 1:
        raise FlowFormatError(
            "indiceDatiSingoloPagamento must be at least 1", kind=FlowFormatError.INVALID, line=where
        )
    raw_outcome = need("codiceEsitoSingoloPagamento")
    return FlowLine(
        index=index,
        iuv=_id(need("identificativoUnivocoVersamento"), name="identificativoUnivocoVersamento", line=where),
        iur=_id(
            need("identificativoUnivocoRiscossione"), name="identificativoUnivocoRiscossione", line=where
        ),
        transfer_index=transfer_index,
        amount=_amount(need("singoloImportoPagato"), name="singoloImportoPagato", line=where),
        outcome=outcome_of(raw_outcome),
        outcome_raw=raw_outcome,
        pay_date=_date(need("dataEsitoSingoloPagamento"), name="dataEsitoSingoloPagamento", line=where),
    )


class FlowReader:
    """A FlussoRiversamento read as a stream: ``header`` first, then ``batches()`` of lines (flat memory).

    Only the root's own children reach Python (libxml2 filters the rest), and each line is freed once read.
    """

    def __init__(self, stream: IO[bytes], *, batch_size: int = 1000) -> None:
        self._events = iterparse_xml(stream, events=("end",), tag=(_LINE_Q, *_HEADER_Q))
        self._batch_size = batch_size
        self._fields: dict[str, etree._Element] = {}
        self._first: etree._Element | None = None
        self._count = 0
        self._done = False
        self.header = self._read_header()

    def _next(self) -> etree._Element | None:
        try:
            return next(self._events)[1]
        except StopIteration:
            self._done = True
            return None
        except UnsafeXMLError as exc:
            raise FlowFormatError(str(exc), kind=FlowFormatError.UNSAFE) from exc
        except MalformedXMLError as exc:
            raise FlowFormatError(str(exc), kind=FlowFormatError.MALFORMED, line=exc.line) from exc

    def _read_header(self) -> FlowHeader:
        root: etree._Element | None = None
        while True:
            element = self._next()
            if element is None:
                break
            parent = element.getparent()
            if root is None:
                if element.getroottree().docinfo.doctype:
                    raise FlowFormatError(
                        "XML with a DOCTYPE declaration is refused", kind=FlowFormatError.UNSAFE
                    )
                if parent is None or parent.tag != _q(ROOT):
                    where = "the root" if parent is None else f"{parent.tag}"
                    raise FlowFormatError(
                        f"{element.tag} found under {where}, not under {{{NAMESPACE}}}{ROOT}",
                        kind=FlowFormatError.NOT_A_FLOW,
                        line=element.sourceline,
                    )
                root = parent
            elif parent is not root:
                raise FlowFormatError(
                    f"unexpected {element.tag} inside {parent.tag if parent is not None else '?'}",
                    kind=FlowFormatError.INVALID,
                    line=element.sourceline,
                )
            if element.tag == _LINE_Q:
                self._first = element  # the header is complete: everything before the first line
                break
            self._fields[_HEADER_Q[element.tag]] = element  # type: ignore[index]
        if root is None:
            raise FlowFormatError(f"no {ROOT} in namespace {NAMESPACE}", kind=FlowFormatError.NOT_A_FLOW)
        self._root = root
        return self._header(root)

    def _header(self, root: etree._Element) -> FlowHeader:
        f = self._fields
        line = root.sourceline

        def text(name: str, path: str = "", *, required: bool = True) -> str | None:
            element = f.get(name)
            if element is None:
                if required:
                    raise FlowFormatError(f"{name} missing", kind=FlowFormatError.INVALID, line=line)
                return None
            if path:
                return _text(element, path, name=f"{name}/{path.replace('p:', '')}", required=required)
            value = (element.text or "").strip()
            if not value and required:
                raise FlowFormatError(
                    f"{name} missing", kind=FlowFormatError.INVALID, line=element.sourceline
                )
            return value or None

        sender_id = "p:identificativoUnivocoMittente/p:codiceIdentificativoUnivoco"
        receiver_id = "p:identificativoUnivocoRicevente/p:codiceIdentificativoUnivoco"
        settlement = text("dataRegolamento")
        return FlowHeader(
            id_flusso=_id(text("identificativoFlusso"), name="identificativoFlusso", line=line),
            psp_id=_id(text("istitutoMittente", sender_id), name="codiceIdentificativoUnivoco", line=line),
            ec=_id(text("istitutoRicevente", receiver_id), name="codiceIdentificativoUnivoco", line=line),
            total_count=_int(text("numeroTotalePagamenti"), name="numeroTotalePagamenti", line=line),
            total_amount=_amount(text("importoTotalePagamenti"), name="importoTotalePagamenti", line=line),
            flow_at=local_datetime(text("dataOraFlusso", required=False)),
            settlement_ref=text("identificativoUnivocoRegolamento", required=False),
            settlement_date=_date(settlement, name="dataRegolamento", line=line) if settlement else None,
            psp_name=text("istitutoMittente", "p:denominazioneMittente", required=False),
            bic=text("codiceBicBancaDiRiversamento", required=False),
            ec_name=text("istitutoRicevente", "p:denominazioneRicevente", required=False),
            version=text("versioneOggetto", required=False),
        )

    def batches(self) -> Iterator[list[FlowLine]]:
        """The lines, ``batch_size`` at a time; each line element is freed once read."""
        batch: list[FlowLine] = []
        element, self._first = self._first, None
        if element is None and not self._done:
            element = self._next()
        while element is not None:
            if element.tag != _LINE_Q or element.getparent() is not self._root:
                raise FlowFormatError(
                    f"unexpected element {element.tag} among the lines",
                    kind=FlowFormatError.INVALID,
                    line=element.sourceline,
                )
            self._count += 1
            batch.append(_line(element, self._count))
            element.clear()
            while element.getprevious() is not None:
                del self._root[0]
            if len(batch) >= self._batch_size:
                yield batch
                batch = []
            element = self._next()
        if batch:
            yield batch


def read_flow(stream: IO[bytes], *, batch_size: int = 1000) -> FlowReader:
    """Start reading a FlussoRiversamento (1.0.4 or 1.0.5): header parsed now, lines on demand."""
    return FlowReader(stream, batch_size=batch_size)


def fdr_line(
    *,
    index: int,
    iuv: str,
    iur: str,
    transfer_index: int,
    amount: Decimal,
    pay_status: str,
    pay_date: date | None,
) -> FlowLine:
    """A line from FdR REST's Payment fields."""
    return FlowLine(
        index=index,
        iuv=iuv,
        iur=iur,
        transfer_index=transfer_index,
        amount=amount,
        outcome=outcome_of(pay_status),
        outcome_raw=pay_status,
        pay_date=pay_date,
    )


# --- IUV space ------------------------------------------------------------------------------------


def iuv_in_space(
    iuv: str, *, aux_digit: int, segregation_code: str | None = None, application_code: str | None = None
) -> bool:
    """Whether an IUV has the shape of the EC's own IUVs (aux digit and segregation/application code)."""
    if is_valid_rf(iuv):
        return True  # an application's own RF reference: no code inside to tell brokers apart
    if not _DIGITS.fullmatch(iuv):
        return False
    if aux_digit == 3:
        return len(iuv) == 17 and (segregation_code is None or iuv.startswith(segregation_code))
    if aux_digit == 0:
        if len(iuv) != 15:
            return False
        # The application code is not in the IUV: only its check digits tell whose it is.
        return application_code is None or check_digits(f"0{application_code}{iuv[:13]}") == iuv[13:]
    return len(iuv) == 17  # aux 1 and 2 carry no code of the broker


# --- checks ---------------------------------------------------------------------------------------


def check_receiver(header: FlowHeader, *, expected_ec: str) -> Anomaly | None:
    """007116 when the flow names another EC than the one it was downloaded for."""
    if header.ec != expected_ec:
        return Anomaly(WRONG_EC, f"Il flusso e' destinato al dominio {header.ec} e non a {expected_ec}")
    return None


def check_totals(header: FlowHeader, *, count: int, total: Decimal) -> list[Anomaly]:
    """007107 (count) and 007106 (sum) of the lines against the header."""
    found = []
    if count != header.total_count:
        found.append(
            Anomaly(
                COUNT_MISMATCH, f"Il flusso ha {count} pagamenti, la testata ne dichiara {header.total_count}"
            )
        )
    if total != header.total_amount:
        found.append(
            Anomaly(
                TOTAL_MISMATCH,
                f"La somma dei pagamenti e' {total:.2f}, la testata dichiara {header.total_amount:.2f}",
            )
        )
    return found


def check_outcome(line: FlowLine) -> Anomaly | None:
    """007110 for an outcome code that is neither in FlussoRiversamento 1.0.4/1.0.5 nor in FdR REST."""
    if line.outcome is None:
        return Anomaly(UNKNOWN_OUTCOME, f"Codice esito {line.outcome_raw!r} sconosciuto")
    return None


def line_key(line: FlowLine) -> str:
    """The (IUV, IUR, index) key that must be unique inside a flow."""
    return f"{line.iuv}\x00{line.iur}\x00{line.transfer_index}"


class FlowChecker:
    """The checks of one flow read in batches: per-line findings now, flow-level findings at ``finish``."""

    def __init__(self, header: FlowHeader, *, expected_ec: str) -> None:
        self.header = header
        self.receiver = check_receiver(header, expected_ec=expected_ec)
        self.count = 0
        self.total = Decimal("0.00")
        self.duplicates = 0
        self._seen: set[str] = set()

    def line_anomalies(self, line: FlowLine) -> list[Anomaly]:
        """007110 and 007115 of one line; counts it towards the totals."""
        self.count += 1
        self.total += line.amount
        found = []
        outcome = check_outcome(line)
        if outcome is not None:
            found.append(outcome)
        key = line_key(line)
        if key in self._seen:
            self.duplicates += 1
            found.append(
                Anomaly(
                    DUPLICATE_LINE,
                    f"Pagamento (IUV {line.iuv}, IUR {line.iur}, indice "
                    f"{line.transfer_index}) ripetuto nel flusso",
                )
            )
        else:
            self._seen.add(key)
        return found

    def finish(self) -> list[Anomaly]:
        """The flow-level findings (007116, 007107, 007106, 007115), once every line was seen."""
        found = [self.receiver] if self.receiver is not None else []
        found += check_totals(self.header, count=self.count, total=self.total)
        if self.duplicates:
            found.append(Anomaly(DUPLICATE_LINE, f"{self.duplicates} pagamenti ripetuti nel flusso"))
        self._seen.clear()
        return found


def flow_state(anomalies: Iterable[Anomaly]) -> FlowState:
    """ANOMALA when a flow-level anomaly was found, ACCETTATA otherwise."""
    return FlowState.ANOMALA if any(a.code in FLOW_LEVEL for a in anomalies) else FlowState.ACCETTATA


# --- linking --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    """A collection that may be the payment a line reports; ``linked`` once a live flow line claimed it."""

    id: int
    iur: str | None
    amount: Decimal
    position_id: int | None = None
    psp_id: str | None = None
    linked: bool = False


@dataclass(frozen=True, slots=True)
class LineDecision:
    """What to do with a line: its state, the collection it reports (``claim``: take it) and its findings."""

    state: LineState
    collection_id: int | None = None
    position_id: int | None = None
    anomalies: tuple[Anomaly, ...] = ()
    claim: bool = False


def decide_line(
    line: FlowLine,
    *,
    candidates: Sequence[Candidate],
    position_id: int | None,
    in_space: bool,
    psp_id: str,
    anomalies: Sequence[Anomaly] = (),
) -> LineDecision:
    """Link a line to one of the collections of its (EC, IUV, transfer index), or say why not.

    An exact IUR match wins; otherwise one unlinked collection with no IUR yet and the same amount (the
    reporting PSP's receipt breaks ties). A revoked line (outcome 3) refers to its payment without taking
    it. Lines of known positions with nothing to link wait for their receipt (NO_RECEIPT).
    """
    known_position = (
        position_id
        if position_id is not None
        else next((c.position_id for c in candidates if c.position_id is not None), None)
    )
    if anomalies:
        return LineDecision(LineState.ANOMALA, position_id=known_position, anomalies=tuple(anomalies))
    exact = next((c for c in candidates if c.iur == line.iur), None)
    if exact is not None:
        where = exact.position_id if exact.position_id is not None else known_position
        if line.outcome == REVOKED:
            return LineDecision(LineState.LINKED, collection_id=exact.id, position_id=where)
        if exact.linked:
            return LineDecision(
                LineState.ANOMALA,
                position_id=where,
                anomalies=(
                    Anomaly(
                        ALREADY_REPORTED, f"Pagamento (IUV {line.iuv}, IUR {line.iur}) gia' rendicontato"
                    ),
                ),
            )
        if exact.amount != line.amount:
            return LineDecision(
                LineState.ANOMALA, position_id=where, anomalies=(_amount_anomaly(line, exact),)
            )
        return LineDecision(LineState.LINKED, collection_id=exact.id, position_id=where, claim=True)
    free = [c for c in candidates if not c.linked and c.iur is None]
    if free and line.outcome != REVOKED:
        same = [c for c in free if c.amount == line.amount]
        if len(same) > 1:
            same = [c for c in same if c.psp_id == psp_id] or same
        if len(same) == 1:
            chosen = same[0]
            where = chosen.position_id if chosen.position_id is not None else known_position
            return LineDecision(LineState.LINKED, collection_id=chosen.id, position_id=where, claim=True)
        if same:
            return LineDecision(
                LineState.ANOMALA,
                position_id=known_position,
                anomalies=(
                    Anomaly(
                        SEVERAL_PAYMENTS,
                        f"Il pagamento (IUV {line.iuv}, indice {line.transfer_index}) "
                        f"corrisponde a {len(same)} riscossioni",
                    ),
                ),
            )
        return LineDecision(
            LineState.ANOMALA, position_id=known_position, anomalies=(_amount_anomaly(line, free[0]),)
        )
    if known_position is not None:
        return LineDecision(LineState.NO_RECEIPT, position_id=known_position)
    if not in_space and not candidates:
        return LineDecision(LineState.ALTRO_INTERMEDIARIO)
    if line.outcome in NO_RPT_OUTCOMES:
        return LineDecision(
            LineState.UNKNOWN,
            anomalies=(
                Anomaly(
                    NO_RPT_UNKNOWN_DEBT,
                    f"Pagamento senza RPT (esito {line.outcome}) di un debito sconosciuto (IUV {line.iuv})",
                ),
            ),
        )
    return LineDecision(
        LineState.UNKNOWN,
        anomalies=(
            Anomaly(
                PAYMENT_UNKNOWN,
                f"Pagamento (IUV {line.iuv}, IUR {line.iur}, indice {line.transfer_index}) sconosciuto",
            ),
        ),
    )


def _amount_anomaly(line: FlowLine, candidate: Candidate) -> Anomaly:
    return Anomaly(
        AMOUNT_MISMATCH,
        f"Importo rendicontato {line.amount:.2f} diverso dall'importo pagato "
        f"{candidate.amount:.2f} (IUV {line.iuv}, indice {line.transfer_index})",
    )


# --- revisions and watermarks ---------------------------------------------------------------------

SKIP = "skip"
CURRENT = "current"
OBSOLETE = "obsolete"


def revision_action(*, revision: int, stored: Collection[int]) -> str:
    """SKIP a stored revision, CURRENT for a newer one (older become OBSOLETA), OBSOLETE for an older one."""
    if revision in stored:
        return SKIP
    if stored and revision < max(stored):
        return OBSOLETE
    return CURRENT


def watermark_after(*, handled: Iterable[datetime], failed: Iterable[datetime]) -> datetime | None:
    """The newest publication time the listing cursor may move to: every flow up to it is stored."""
    first_failure = min(failed, default=None)
    done = [p for p in handled if first_failure is None or p < first_failure]
    return max(done, default=None)


# --- rendering ------------------------------------------------------------------------------------


def render_flow_xml(header: FlowHeader, lines: Iterable[FlowLine]) -> Iterator[bytes]:
    """A FlussoRiversamento document of a flow known from FdR REST, streamed a line at a time."""

    def x(value: object) -> str:
        return escape(str(value))

    flow_at = header.flow_at.astimezone(_ROME).strftime("%Y-%m-%dT%H:%M:%S") if header.flow_at else ""
    head = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<FlussoRiversamento xmlns="{NAMESPACE}">\n',
        f"<versioneOggetto>{x(header.version or '1.0')}</versioneOggetto>\n",
        f"<identificativoFlusso>{x(header.id_flusso)}</identificativoFlusso>\n",
        f"<dataOraFlusso>{flow_at}</dataOraFlusso>\n",
        f"<identificativoUnivocoRegolamento>{x(header.settlement_ref or '')}"
        "</identificativoUnivocoRegolamento>\n",
        f"<dataRegolamento>{header.settlement_date.isoformat() if header.settlement_date else ''}"
        "</dataRegolamento>\n",
        "<istitutoMittente><identificativoUnivocoMittente><tipoIdentificativoUnivoco>B</tipoIdentificativoUnivoco>"
        f"<codiceIdentificativoUnivoco>{x(header.psp_id)}</codiceIdentificativoUnivoco>"
        "</identificativoUnivocoMittente>"
        + (f"<denominazioneMittente>{x(header.psp_name)}</denominazioneMittente>" if header.psp_name else "")
        + "</istitutoMittente>\n",
    ]
    if header.bic:
        head.append(f"<codiceBicBancaDiRiversamento>{x(header.bic)}</codiceBicBancaDiRiversamento>\n")
    head += [
        "<istitutoRicevente><identificativoUnivocoRicevente><tipoIdentificativoUnivoco>G</tipoIdentificativoUnivoco>"
        f"<codiceIdentificativoUnivoco>{x(header.ec)}</codiceIdentificativoUnivoco></identificativoUnivocoRicevente>"
        + (f"<denominazioneRicevente>{x(header.ec_name)}</denominazioneRicevente>" if header.ec_name else "")
        + "</istitutoRicevente>\n",
        f"<numeroTotalePagamenti>{header.total_count}</numeroTotalePagamenti>\n",
        f"<importoTotalePagamenti>{header.total_amount:.2f}</importoTotalePagamenti>\n",
    ]
    yield "".join(head).encode("utf-8")
    for line in lines:
        yield (
            "<datiSingoliPagamenti>"
            f"<identificativoUnivocoVersamento>{x(line.iuv)}</identificativoUnivocoVersamento>"
            f"<identificativoUnivocoRiscossione>{x(line.iur)}</identificativoUnivocoRiscossione>"
            f"<indiceDatiSingoloPagamento>{line.transfer_index}</indiceDatiSingoloPagamento>"
            f"<singoloImportoPagato>{line.amount:.2f}</singoloImportoPagato>"
            f"<codiceEsitoSingoloPagamento>{x(line.outcome_raw if line.outcome is None else line.outcome)}"
            "</codiceEsitoSingoloPagamento>"
            f"<dataEsitoSingoloPagamento>{line.pay_date.isoformat() if line.pay_date else ''}"
            "</dataEsitoSingoloPagamento>"
            "</datiSingoliPagamenti>\n"
        ).encode()
    yield b"</FlussoRiversamento>\n"
