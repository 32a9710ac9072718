"""Debt positions as applications send them (GovPay API Pendenze v2 names) and every rule they must obey."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from rules.calendar import italian_today  # noqa: F401  (re-exported: callers import it from here)
from rules.identifiers import IdentifierError, is_valid_rf, parse_nav, validate_iban

CENT = Decimal("0.01")
# Two places always, so 10 and 10.00 are the same amount (and the same content hash).
Amount = Annotated[Decimal, Field(gt=0, max_digits=11, decimal_places=2), AfterValidator(lambda v: v.quantize(CENT))]


class BusinessError(ValueError):
    """A rule of the platform refuses the request (HTTP 422), with GovPay's code and the offending field."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        self.code = code
        self.field = field
        self.message = message
        super().__init__(f"{code}: {message}" + (f" ({field})" if field else ""))


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)


class SoggettoPagatore(_In):
    """The debtor."""

    tipo: Literal["F", "G"] = "F"
    identificativo: str = Field(min_length=1, max_length=35)
    anagrafica: str = Field(min_length=1, max_length=140)
    indirizzo: str | None = Field(default=None, max_length=70)
    civico: str | None = Field(default=None, max_length=16)
    cap: str | None = Field(default=None, max_length=16)
    localita: str | None = Field(default=None, max_length=35)
    provincia: str | None = Field(default=None, max_length=35)
    nazione: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    email: str | None = Field(default=None, max_length=256, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    cellulare: str | None = Field(default=None, max_length=35)


class Soglia(_In):
    """A discount/penalty threshold of a document (GovPay 'soglia')."""

    giorni: int = Field(ge=0)
    tipo: Literal["ENTRO", "OLTRE", "RIDOTTO", "SCONTATO"]


class Documento(_In):
    """The document a position belongs to, with its instalment number or threshold."""

    identificativo: str = Field(min_length=1, max_length=35)
    descrizione: str = Field(min_length=1, max_length=140)
    rata: int | None = Field(default=None, ge=1)
    soglia: Soglia | None = None

    @model_validator(mode="after")
    def _one(self) -> Documento:
        if self.rata is not None and self.soglia is not None:
            raise ValueError("rata and soglia are alternatives")
        return self


class VocePendenza(_In):
    """One voce: an IBAN, a revenue type (codEntrata) or a digital stamp."""

    idVocePendenza: str = Field(min_length=1, max_length=35)
    importo: Amount
    descrizione: str = Field(min_length=1, max_length=140)
    idDominio: str | None = Field(default=None, pattern=r"^[0-9]{11}$")
    datiAllegati: Any = None
    descrizioneCausaleRPT: str | None = Field(default=None, max_length=140)
    ibanAccredito: str | None = None
    ibanAppoggio: str | None = None
    tipoContabilita: Literal["CAPITOLO", "SPECIALE", "SIOPE", "ALTRO"] | None = None
    codiceContabilita: str | None = Field(default=None, max_length=140)
    codEntrata: str | None = Field(default=None, max_length=35)
    tipoBollo: str | None = Field(default=None, pattern=r"^[0-9]{2}$")
    hashDocumento: str | None = Field(default=None, max_length=70)
    provinciaResidenza: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")

    @field_validator("ibanAccredito", "ibanAppoggio")
    @classmethod
    def _iban(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_iban(value)
        except IdentifierError as exc:
            raise ValueError(exc.args[0].split(": ", 1)[-1]) from exc

    @model_validator(mode="after")
    def _kind(self) -> VocePendenza:
        kinds = [k for k, v in (("ibanAccredito", self.ibanAccredito), ("codEntrata", self.codEntrata),
                                ("tipoBollo", self.tipoBollo)) if v]
        if len(kinds) != 1:
            raise ValueError("exactly one of ibanAccredito, codEntrata, tipoBollo is required")
        if self.tipoBollo and not (self.hashDocumento and self.provinciaResidenza):
            raise ValueError("tipoBollo requires hashDocumento and provinciaResidenza")
        if self.ibanAccredito and not (self.tipoContabilita and self.codiceContabilita):
            raise ValueError("ibanAccredito requires tipoContabilita and codiceContabilita")
        return self


class PendenzaPut(_In):
    """Body of PUT /pendenze/{idA2A}/{idPendenza}."""

    idTipoPendenza: str = Field(min_length=1, max_length=35)
    idDominio: str = Field(pattern=r"^[0-9]{11}$")
    idUnitaOperativa: str | None = Field(default=None, max_length=35)
    causale: str = Field(min_length=1, max_length=140)
    soggettoPagatore: SoggettoPagatore
    importo: Amount
    numeroAvviso: str | None = Field(default=None, pattern=r"^[0-9]{18}$")
    dataValidita: date | None = None
    dataScadenza: date | None = None
    annoRiferimento: int | None = Field(default=None, ge=1900, le=2999)
    cartellaPagamento: str | None = Field(default=None, max_length=35)
    datiAllegati: Any = None
    tassonomiaAvviso: str | None = Field(default=None, max_length=140)
    direzione: str | None = Field(default=None, max_length=35)
    divisione: str | None = Field(default=None, max_length=35)
    documento: Documento | None = None
    voci: list[VocePendenza] = Field(min_length=1, max_length=5)


@dataclass(frozen=True)
class CreditorView:
    """What validation needs to know of an EC."""

    id_dominio: str
    aux_digit: int
    segregation_code: str | None
    application_code: str | None
    enabled: bool
    units: frozenset[str]
    debt_types: dict[str, str | None]  # code -> default revenue code
    revenue_types: dict[str, tuple[str, str | None, str, str]]  # code -> (iban, support, acc type, acc code)
    ibans: dict[str, bool]  # iban -> postal


@dataclass(frozen=True)
class RegistryView:
    """A snapshot of the registry for validating positions without touching the database."""

    creditors: dict[str, CreditorView]


@dataclass(frozen=True)
class Caller:
    """The application on whose behalf a position is written."""

    id_a2a: str
    own_iuv: bool
    all_creditors: bool
    grants: frozenset[tuple[str, str]]  # (id_dominio, debt type or "*")

    def may_use(self, id_dominio: str, debt_type: str | None = None) -> bool:
        """Whether the application is enabled for this EC (and debt type)."""
        if self.all_creditors:
            return True
        if (id_dominio, "*") in self.grants:
            return True
        return debt_type is not None and (id_dominio, debt_type) in self.grants


@dataclass
class ItemData:
    """A voce, normalised into the platform's columns."""

    item_index: int
    id_voce: str
    id_dominio: str
    description: str
    amount: Decimal
    kind: str
    iban: str | None = None
    support_iban: str | None = None
    postal: bool = False
    revenue_code: str | None = None
    accounting_type: str | None = None
    accounting_code: str | None = None
    stamp_type: str | None = None
    stamp_hash: str | None = None
    stamp_province: str | None = None
    attached_data: Any = None


@dataclass
class PositionData:
    """A position, validated and normalised into the platform's columns (not yet stored)."""

    id_a2a: str
    id_pendenza: str
    id_dominio: str
    debt_type: str
    causale: str
    debtor_type: str
    debtor_id: str
    debtor_name: str
    amount: Decimal
    content_hash: str
    items: list[ItemData] = field(default_factory=list)
    nav: str | None = None
    unit_code: str | None = None
    debtor_address: str | None = None
    debtor_civic: str | None = None
    debtor_cap: str | None = None
    debtor_locality: str | None = None
    debtor_province: str | None = None
    debtor_nation: str | None = None
    debtor_email: str | None = None
    debtor_phone: str | None = None
    valid_until: date | None = None
    due_date: date | None = None
    year: int | None = None
    cartella: str | None = None
    taxonomy: str | None = None
    direction: str | None = None
    division: str | None = None
    attached_data: Any = None
    document_id: str | None = None
    document_description: str | None = None
    instalment: int | None = None
    threshold: str | None = None

    def columns(self) -> dict[str, Any]:
        """The position's own columns (no items)."""
        return {k: v for k, v in self.__dict__.items() if k != "items"}


def content_hash(body: PendenzaPut) -> str:
    """A stable hash of what the application asked for, so a repeated PUT is recognised as unchanged."""
    return hashlib.sha256(body.model_dump_json(exclude_none=True).encode("utf-8")).hexdigest()


def validate_position(body: PendenzaPut, *, id_a2a: str, id_pendenza: str, caller: Caller,
                      registry: RegistryView) -> PositionData:
    """Apply every business rule to a new or changed position; raise BusinessError with GovPay's code."""
    if caller.id_a2a != id_a2a:
        raise PermissionError(f"application {caller.id_a2a} may not write positions of {id_a2a}")
    creditor = registry.creditors.get(body.idDominio)
    if creditor is None or not creditor.enabled:
        raise BusinessError("DOM_001", f"Dominio {body.idDominio} sconosciuto", field="idDominio")
    if body.idTipoPendenza not in creditor.debt_types:
        raise BusinessError("TVR_001", f"Tipo pendenza {body.idTipoPendenza} sconosciuto per il dominio "
                            f"{body.idDominio}", field="idTipoPendenza")
    if not caller.may_use(body.idDominio, body.idTipoPendenza):
        raise PermissionError(f"application {id_a2a} is not enabled for {body.idDominio}/{body.idTipoPendenza}")
    if body.idUnitaOperativa and body.idUnitaOperativa not in creditor.units:
        raise BusinessError("UOP_001", f"Unita operativa {body.idUnitaOperativa} sconosciuta",
                            field="idUnitaOperativa")
    seen: set[str] = set()
    for i, voce in enumerate(body.voci):
        if voce.idVocePendenza in seen:
            raise BusinessError("VER_001", f"idVocePendenza {voce.idVocePendenza} duplicato",
                                field=f"voci[{i}].idVocePendenza")
        seen.add(voce.idVocePendenza)
    total = sum((v.importo for v in body.voci), Decimal("0.00"))
    if total != body.importo:
        raise BusinessError("VER_002", f"La somma degli importi delle voci ({total}) non corrisponde "
                            f"all'importo della pendenza ({body.importo})", field="importo")
    if body.dataValidita and body.dataScadenza and body.dataValidita > body.dataScadenza:
        raise BusinessError("VER_012", "dataValidita successiva a dataScadenza", field="dataValidita")
    nav = None
    if body.numeroAvviso:
        if not caller.own_iuv:
            raise BusinessError("VER_010", "L'applicazione non e' abilitata a indicare il numero avviso",
                                field="numeroAvviso")
        nav = _check_own_nav(body.numeroAvviso, creditor)
    items = [_item(i, voce, body.idDominio, creditor, registry) for i, voce in enumerate(body.voci)]
    payer = body.soggettoPagatore
    return PositionData(
        id_a2a=id_a2a, id_pendenza=id_pendenza, id_dominio=body.idDominio, debt_type=body.idTipoPendenza,
        causale=body.causale, debtor_type=payer.tipo, debtor_id=payer.identificativo.upper(),
        debtor_name=payer.anagrafica, amount=body.importo, content_hash=content_hash(body), items=items,
        nav=nav, unit_code=body.idUnitaOperativa, debtor_address=payer.indirizzo, debtor_civic=payer.civico,
        debtor_cap=payer.cap, debtor_locality=payer.localita, debtor_province=payer.provincia,
        debtor_nation=payer.nazione, debtor_email=payer.email, debtor_phone=payer.cellulare,
        valid_until=body.dataValidita, due_date=body.dataScadenza, year=body.annoRiferimento,
        cartella=body.cartellaPagamento, taxonomy=body.tassonomiaAvviso, direction=body.direzione,
        division=body.divisione, attached_data=body.datiAllegati,
        document_id=body.documento.identificativo if body.documento else None,
        document_description=body.documento.descrizione if body.documento else None,
        instalment=body.documento.rata if body.documento else None,
        threshold=(f"{body.documento.soglia.tipo}:{body.documento.soglia.giorni}"
                   if body.documento and body.documento.soglia else None),
    )


def _check_own_nav(nav: str, creditor: CreditorView) -> str:
    try:
        parsed = parse_nav(nav)
    except IdentifierError as exc:
        raise BusinessError("VER_011", f"numeroAvviso non valido: {exc}", field="numeroAvviso") from exc
    if not parsed.check_digits_ok:
        raise BusinessError("VER_011", "numeroAvviso: cifre di controllo errate", field="numeroAvviso")
    if parsed.aux_digit != creditor.aux_digit or (
        parsed.aux_digit == 3 and parsed.segregation_code != creditor.segregation_code) or (
        parsed.aux_digit == 0 and parsed.application_code != creditor.application_code):
        raise BusinessError("VER_011", "numeroAvviso non appartiene allo spazio IUV del dominio",
                            field="numeroAvviso")
    return nav


def _item(i: int, voce: VocePendenza, id_dominio: str, creditor: CreditorView, registry: RegistryView) -> ItemData:
    where = f"voci[{i}]"
    beneficiary_id = voce.idDominio or id_dominio
    beneficiary = registry.creditors.get(beneficiary_id)
    if beneficiary is None:
        raise BusinessError("DOM_002", f"Dominio beneficiario {beneficiary_id} sconosciuto",
                            field=f"{where}.idDominio")
    base = ItemData(item_index=i + 1, id_voce=voce.idVocePendenza, id_dominio=beneficiary_id,
                    description=voce.descrizione, amount=voce.importo, kind="IBAN",
                    attached_data=voce.datiAllegati)
    if voce.tipoBollo:
        base.kind, base.stamp_type = "STAMP", voce.tipoBollo
        base.stamp_hash, base.stamp_province = voce.hashDocumento, voce.provinciaResidenza
        return base
    if voce.codEntrata:
        revenue = beneficiary.revenue_types.get(voce.codEntrata)
        if revenue is None:
            raise BusinessError("TRB_001", f"Tipo entrata {voce.codEntrata} sconosciuto per il dominio "
                                f"{beneficiary_id}", field=f"{where}.codEntrata")
        base.kind, base.revenue_code = "REVENUE", voce.codEntrata
        base.iban, base.support_iban, base.accounting_type, base.accounting_code = revenue
        base.postal = beneficiary.ibans.get(revenue[0], False)
        return base
    assert voce.ibanAccredito is not None
    if voce.ibanAccredito not in beneficiary.ibans:
        raise BusinessError("TRB_002", f"IBAN {voce.ibanAccredito} non censito per il dominio {beneficiary_id}",
                            field=f"{where}.ibanAccredito")
    if voce.ibanAppoggio and voce.ibanAppoggio not in beneficiary.ibans:
        raise BusinessError("TRB_002", f"IBAN {voce.ibanAppoggio} non censito per il dominio {beneficiary_id}",
                            field=f"{where}.ibanAppoggio")
    base.iban, base.support_iban = voce.ibanAccredito, voce.ibanAppoggio
    base.postal = beneficiary.ibans[voce.ibanAccredito]
    base.accounting_type, base.accounting_code = voce.tipoContabilita, voce.codiceContabilita
    return base


PAID_STATES = frozenset({"ESEGUITA", "ESEGUITA_PARZIALE", "INCASSATA", "ANOMALA"})


@dataclass(frozen=True)
class StoredItem:
    """What an update must compare against: a stored voce's id, beneficiary and kind."""

    id_voce: str
    id_dominio: str
    kind: str


def check_update(*, state: str, nav: str | None, items: list[StoredItem], new: PositionData) -> None:
    """Refuse the changes GovPay refuses on an existing position (VER_003 … VER_008)."""
    if state in PAID_STATES:
        raise BusinessError("VER_003", "La pendenza risulta gia' pagata e non puo' essere modificata")
    if len(items) != len(new.items):
        raise BusinessError("VER_004", f"Il numero di voci non puo' cambiare ({len(items)} -> {len(new.items)})",
                            field="voci")
    for i, (old, item) in enumerate(zip(items, new.items, strict=True)):
        if old.id_voce != item.id_voce:
            raise BusinessError("VER_005", f"idVocePendenza non modificabile ({old.id_voce} -> {item.id_voce})",
                                field=f"voci[{i}].idVocePendenza")
        if old.id_dominio != item.id_dominio:
            raise BusinessError("VER_006", f"Il dominio beneficiario non puo' cambiare ({old.id_dominio} -> "
                                f"{item.id_dominio})", field=f"voci[{i}].idDominio")
        if old.kind != item.kind:
            raise BusinessError("VER_007", f"Il tipo della voce non puo' cambiare ({old.kind} -> {item.kind})",
                                field=f"voci[{i}]")
    if new.nav is not None and nav is not None and new.nav != nav:
        raise BusinessError("VER_008", "numeroAvviso non modificabile", field="numeroAvviso")




def visible_state(*, state: str, due_date: date | None, today: date) -> str:
    """The state an application sees: SCADUTA is computed for unpaid positions past their due date."""
    if state == "NON_ESEGUITA" and due_date is not None and due_date < today:
        return "SCADUTA"
    return state


def check_annul(state: str) -> None:
    """Refuse to annul a paid position (VER_009)."""
    if state in PAID_STATES:
        raise BusinessError("VER_009", "La pendenza risulta pagata e non puo' essere annullata")


def check_restore(state: str) -> None:
    """Only an annulled position can go back to NON_ESEGUITA."""
    if state != "ANNULLATA":
        raise BusinessError("VER_013", f"Solo una pendenza ANNULLATA puo' tornare NON_ESEGUITA (stato {state})")


def is_rf_reference(value: str) -> bool:
    """Whether an IUV brought by an application is an ISO 11649 RF reference."""
    return is_valid_rf(value)
