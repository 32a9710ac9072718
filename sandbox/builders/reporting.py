"""Flussi di Rendicontazione (FR) as the Node hands them out: FlussoRiversamento XML and FdR REST JSON.

Pure functions: the same FlowSpec always gives the same bytes. Two facts of the official specs shape
this module:

- ``FlussoRiversamento_1_0_5.xsd`` (current) allows outcome codes 0, 4, 8, 9 and no longer 3 (revoked);
  ``FlussoRiversamento_1_0_4.xsd`` allows 0, 3, 9. A flow with a revoked line therefore validates only
  against 1.0.4 (or the 0-3-4-8-9 variant some ECs use), never against 1.0.5. The builder writes code 3 as
  legacy flows do; pick the schema when validating.
- Both XSDs forbid negative amounts (``stImporto`` is ``\\d+\\.\\d{2}`` from 0.01), although SACI says a
  revoked line is negative. In strict mode (the default) amounts must be positive; ``strict=False`` writes
  whatever the spec holds, to reproduce the XSD-invalid flows some PSPs send.

``dataOraFlusso`` is written as Italian local time without offset, as the Node does; the FdR JSON uses
UTC instants (``...Z``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from lxml import etree

FLOW_XSD = "xsd-common/FlussoRiversamento_1_0_5.xsd"
LEGACY_FLOW_XSD = "xsd-common/FlussoRiversamento_1_0_4.xsd"
NAMESPACE = "http://www.digitpa.gov.it/schemas/2011/Pagamenti/"
PAY_STATUS: dict[int, str] = {0: "EXECUTED", 3: "REVOKED", 4: "STAND_IN", 8: "STAND_IN_NO_RPT", 9: "NO_RPT"}
MAX_AMOUNT = Decimal("999999999.99")

_ROME = ZoneInfo("Europe/Rome")
_CENT = Decimal("0.01")
_ID_FLUSSO = re.compile(r"[a-zA-Z0-9\-_]{1,35}")
_MAX_PROBLEMS_SHOWN = 20


class FlowSpecError(ValueError):
    """A FlowSpec that would not give a schema-valid flow; ``problems`` lists every reason."""

    def __init__(self, id_flusso: str, problems: Sequence[str]) -> None:
        self.id_flusso = id_flusso
        self.problems = tuple(problems)
        shown = "; ".join(self.problems[:_MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - _MAX_PROBLEMS_SHOWN
        suffix = f"; ... and {more} more" if more > 0 else ""
        super().__init__(f"invalid reporting flow {id_flusso!r}: {shown}{suffix}")


class FlowValidationError(ValueError):
    """A FlussoRiversamento document that its XSD rejects; ``errors`` holds the schema messages."""

    def __init__(self, errors: Sequence[str], *, xsd_path: Path) -> None:
        self.errors = tuple(errors)
        self.xsd_path = xsd_path
        listing = "\n  ".join(self.errors[:_MAX_PROBLEMS_SHOWN])
        super().__init__(
            f"FlussoRiversamento invalid against {xsd_path.name} ({len(self.errors)} errors):\n  {listing}"
        )


@dataclass(frozen=True)
class FlowPayment:
    """One line of a flow: a transfer of a paid IUV with its outcome (0, 3, 4, 8, 9)."""

    iuv: str
    iur: str
    transfer_index: int
    amount: Decimal
    outcome: int
    pay_date: date


@dataclass(frozen=True)
class FlowSpec:
    """A whole flow; ``declared_count``/``declared_total`` override the header to stage totals anomalies."""

    id_flusso: str
    revision: int
    flow_datetime: datetime
    settlement_ref: str
    settlement_date: date
    psp_id: str
    psp_name: str
    bic: str | None
    ec_fiscal_code: str
    ec_name: str
    payments: tuple[FlowPayment, ...]
    psp_broker_id: str | None = None
    channel_id: str | None = None
    declared_count: int | None = None
    declared_total: Decimal | None = None


def flow_totals(spec: FlowSpec) -> tuple[int, Decimal]:
    """Count and sum as written in the header (the declared values when set, else computed)."""
    count = spec.declared_count if spec.declared_count is not None else len(spec.payments)
    if spec.declared_total is not None:
        return count, spec.declared_total
    return count, sum((p.amount for p in spec.payments), Decimal("0.00"))


def _text_problem(name: str, value: object, low: int, high: int) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {type(value).__name__}"
    if not low <= len(value) <= high:
        return f"{name} must be {low}..{high} characters, got {len(value)} ({value!r})"
    return None


def _is_plain_date(value: object) -> bool:
    return isinstance(value, date) and not isinstance(value, datetime)


def _amount_problem(name: str, value: object, *, low: Decimal) -> str | None:
    if not isinstance(value, Decimal) or not value.is_finite():
        return f"{name} must be a finite Decimal, got {value!r}"
    if value != value.quantize(_CENT):
        return f"{name} must have at most two decimal places, got {value}"
    if not low <= value <= MAX_AMOUNT:
        return f"{name} must be between {low} and {MAX_AMOUNT}, got {value}"
    return None


def flow_problems(spec: FlowSpec) -> list[str]:
    """Every reason why the spec would not give a flow valid against the FR schema (empty if none)."""
    problems: list[str] = []
    if not isinstance(spec.id_flusso, str) or not _ID_FLUSSO.fullmatch(spec.id_flusso):
        problems.append(f"id_flusso must match [a-zA-Z0-9-_]{{1,35}}, got {spec.id_flusso!r}")
    if isinstance(spec.revision, bool) or not isinstance(spec.revision, int) or spec.revision < 1:
        problems.append(f"revision must be an integer >= 1, got {spec.revision!r}")
    if not isinstance(spec.flow_datetime, datetime) or spec.flow_datetime.utcoffset() is None:
        problems.append(f"flow_datetime must be a timezone-aware datetime, got {spec.flow_datetime!r}")
    if not _is_plain_date(spec.settlement_date):
        problems.append(f"settlement_date must be a date, got {spec.settlement_date!r}")
    checks = [
        _text_problem("settlement_ref", spec.settlement_ref, 1, 35),
        _text_problem("psp_id", spec.psp_id, 1, 35),
        _text_problem("psp_name", spec.psp_name, 3, 70),
        _text_problem("ec_fiscal_code", spec.ec_fiscal_code, 1, 35),
        _text_problem("ec_name", spec.ec_name, 1, 140),
    ]
    if spec.bic is not None:
        checks.append(_text_problem("bic", spec.bic, 1, 35))
    problems.extend(p for p in checks if p)
    if not spec.payments:
        problems.append("a flow needs at least one payment")
    for n, payment in enumerate(spec.payments, start=1):
        where = f"payment {n}"
        line = [
            _text_problem(f"{where} iuv", payment.iuv, 1, 35),
            _text_problem(f"{where} iur", payment.iur, 1, 35),
            _amount_problem(f"{where} amount", payment.amount, low=_CENT),
        ]
        problems.extend(p for p in line if p)
        index = payment.transfer_index
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 5:
            problems.append(f"{where} transfer_index must be 1..5, got {index!r}")
        if payment.outcome not in PAY_STATUS:
            problems.append(f"{where} outcome must be one of {sorted(PAY_STATUS)}, got {payment.outcome!r}")
        if not _is_plain_date(payment.pay_date):
            problems.append(f"{where} pay_date must be a date, got {payment.pay_date!r}")
    if spec.declared_count is not None and (
        isinstance(spec.declared_count, bool)
        or not isinstance(spec.declared_count, int)
        or not 1 <= spec.declared_count <= 10**15 - 1
    ):
        problems.append(f"declared_count must be 1..999999999999999, got {spec.declared_count!r}")
    if not problems:
        total = flow_totals(spec)[1]
        problem = _amount_problem("header total", total, low=Decimal("0.00"))
        if problem:
            problems.append(problem)
    return problems


def check_flow_spec(spec: FlowSpec) -> None:
    """Raise FlowSpecError listing every problem of the spec."""
    problems = flow_problems(spec)
    if problems:
        raise FlowSpecError(str(spec.id_flusso), problems)


def _x(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _local_datetime(value: datetime) -> str:
    if value.utcoffset() is not None:
        value = value.astimezone(_ROME)
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def _instant(value: datetime) -> str:
    if value.utcoffset() is None:
        raise ValueError(f"FdR instants must be timezone-aware, got {value!r}")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_flow_xml(spec: FlowSpec, *, strict: bool = True) -> bytes:
    """The FlussoRiversamento document of the spec, UTF-8, in the Node's layout (default namespace)."""
    if strict:
        check_flow_spec(spec)
    count, total = flow_totals(spec)
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n',
        f'<FlussoRiversamento xmlns="{NAMESPACE}">\n',
        "    <versioneOggetto>1.0</versioneOggetto>\n",
        f"    <identificativoFlusso>{_x(spec.id_flusso)}</identificativoFlusso>\n",
        f"    <dataOraFlusso>{_local_datetime(spec.flow_datetime)}</dataOraFlusso>\n",
        f"    <identificativoUnivocoRegolamento>{_x(spec.settlement_ref)}"
        "</identificativoUnivocoRegolamento>\n",
        f"    <dataRegolamento>{spec.settlement_date.isoformat()}</dataRegolamento>\n",
        "    <istitutoMittente>\n",
        "        <identificativoUnivocoMittente>\n",
        "            <tipoIdentificativoUnivoco>B</tipoIdentificativoUnivoco>\n",
        f"            <codiceIdentificativoUnivoco>{_x(spec.psp_id)}</codiceIdentificativoUnivoco>\n",
        "        </identificativoUnivocoMittente>\n",
        f"        <denominazioneMittente>{_x(spec.psp_name)}</denominazioneMittente>\n",
        "    </istitutoMittente>\n",
    ]
    if spec.bic is not None:
        parts.append(f"    <codiceBicBancaDiRiversamento>{_x(spec.bic)}</codiceBicBancaDiRiversamento>\n")
    parts += [
        "    <istitutoRicevente>\n",
        "        <identificativoUnivocoRicevente>\n",
        "            <tipoIdentificativoUnivoco>G</tipoIdentificativoUnivoco>\n",
        f"            <codiceIdentificativoUnivoco>{_x(spec.ec_fiscal_code)}</codiceIdentificativoUnivoco>\n",
        "        </identificativoUnivocoRicevente>\n",
        f"        <denominazioneRicevente>{_x(spec.ec_name)}</denominazioneRicevente>\n",
        "    </istitutoRicevente>\n",
        f"    <numeroTotalePagamenti>{count}</numeroTotalePagamenti>\n",
        f"    <importoTotalePagamenti>{_money(total)}</importoTotalePagamenti>\n",
    ]
    for p in spec.payments:
        parts.append(
            "    <datiSingoliPagamenti>\n"
            f"        <identificativoUnivocoVersamento>{_x(p.iuv)}</identificativoUnivocoVersamento>\n"
            f"        <identificativoUnivocoRiscossione>{_x(p.iur)}</identificativoUnivocoRiscossione>\n"
            f"        <indiceDatiSingoloPagamento>{p.transfer_index}</indiceDatiSingoloPagamento>\n"
            f"        <singoloImportoPagato>{_money(p.amount)}</singoloImportoPagato>\n"
            f"        <codiceEsitoSingoloPagamento>{p.outcome}</codiceEsitoSingoloPagamento>\n"
            f"        <dataEsitoSingoloPagamento>{p.pay_date.isoformat()}</dataEsitoSingoloPagamento>\n"
            "    </datiSingoliPagamenti>\n"
        )
    parts.append("</FlussoRiversamento>\n")
    return "".join(parts).encode("utf-8")


@lru_cache(maxsize=8)
def _schema(path: str) -> etree.XMLSchema:
    # Loaded from the file path so the XSD's relative imports resolve.
    return etree.XMLSchema(etree.parse(path))


def default_flow_xsd() -> Path:
    """Path of the current official FR schema (1.0.5) in the configured specs folder."""
    from models.settings import get_settings

    return get_settings().spec_path(FLOW_XSD)


def validate_flow_xml(data: bytes, *, xsd_path: Path | None = None) -> None:
    """Raise FlowValidationError unless the document is valid against the FR schema (1.0.5 by default)."""
    from rules.xmlsafe import parse_xml

    path = xsd_path if xsd_path is not None else default_flow_xsd()
    try:
        root = parse_xml(data)
    except ValueError as exc:
        raise FlowValidationError([str(exc)], xsd_path=path) from exc
    schema = _schema(str(path))
    if not schema.validate(root.getroottree()):
        errors = [f"line {e.line}: {e.message}" for e in schema.error_log]
        raise FlowValidationError(errors, xsd_path=path)


def payment_to_json(p: FlowPayment, index: int) -> dict[str, Any]:
    """One line in the FdR REST shape of ``.../payments`` (``index`` is its 1-based place in the flow)."""
    try:
        status = PAY_STATUS[p.outcome]
    except KeyError:
        raise ValueError(f"outcome must be one of {sorted(PAY_STATUS)}, got {p.outcome!r}") from None
    return {
        "index": index,
        "iuv": p.iuv,
        "iur": p.iur,
        "idTransfer": p.transfer_index,
        "pay": float(p.amount),
        "payStatus": status,
        # Midnight UTC keeps the business day in Italian time too.
        "payDate": f"{p.pay_date.isoformat()}T00:00:00Z",
    }


def flow_header_json(spec: FlowSpec, published: datetime) -> dict[str, Any]:
    """The flow header as ``GET /organizations/{ec}/fdrs/{fdr}/revisions/{rev}/psps/{psp}`` returns it."""
    count, total = flow_totals(spec)
    computed_sum = sum((p.amount for p in spec.payments), Decimal("0.00"))
    header: dict[str, Any] = {
        "status": "PUBLISHED",
        "revision": spec.revision,
        "created": _instant(spec.flow_datetime),
        "updated": _instant(published),
        "fdr": spec.id_flusso,
        "fdrDate": _instant(spec.flow_datetime),
        "regulation": spec.settlement_ref,
        "regulationDate": spec.settlement_date.isoformat(),
    }
    if spec.bic is not None:
        header["bicCodePouringBank"] = spec.bic
    header.update(
        {
            "sender": {
                "type": "BIC_CODE",
                "id": spec.psp_id,
                "pspId": spec.psp_id,
                "pspName": spec.psp_name,
                "pspBrokerId": spec.psp_broker_id or spec.psp_id,
                "channelId": spec.channel_id or f"{spec.psp_id}_01",
            },
            "receiver": {
                "id": spec.ec_fiscal_code,
                "organizationId": spec.ec_fiscal_code,
                "organizationName": spec.ec_name,
            },
            "published": _instant(published),
            "computedTotPayments": len(spec.payments),
            "computedSumPayments": float(computed_sum),
            "totPayments": count,
            "sumPayments": float(total),
        }
    )
    return header


def flow_list_item_json(spec: FlowSpec, published: datetime) -> dict[str, Any]:
    """The flow as one item of ``GET /organizations/{ec}/fdrs`` (FlowByPSP)."""
    return {
        "fdr": spec.id_flusso,
        "pspId": spec.psp_id,
        "revision": spec.revision,
        "published": _instant(published),
        "flowDate": _instant(spec.flow_datetime),
    }


def build_flow_json(
    spec: FlowSpec, *, published: datetime | None = None, strict: bool = True
) -> dict[str, Any]:
    """The flow in FdR REST shapes: ``{"header": <SingleFlowResponse>, "payments": [<Payment>, ...]}``."""
    if strict:
        check_flow_spec(spec)
    return {
        "header": flow_header_json(spec, published if published is not None else spec.flow_datetime),
        "payments": [payment_to_json(p, n) for n, p in enumerate(spec.payments, start=1)],
    }
