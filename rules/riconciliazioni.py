"""A riconciliazione submitted by the EC's accounting (GovPay API Ragioneria v3): its body, rules and hash."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rules.identifiers import IdentifierError, validate_iban
from rules.remittance import RemittanceRef, parse_remittance

# GovPay's codes answered synchronously by PUT /riconciliazioni (DOMAIN §10)
SYNTAX = "021408"
DUPLICATE_DIFFERENT = "021409"
UNKNOWN_EC = "021410"
UNKNOWN_IBAN = "021412"
CAUSALE_INVALID = "021401"
PAYMENT_ALREADY_CASHED = "021406"
ALREADY_CASHED = "021411"
FLOW_ALREADY_CASHED = "021413"

ID_PATTERN = re.compile(r"^[A-Za-z0-9._\-]{1,35}$")
# reconcile_ec names the riconciliazione of a journal movement TES-<movement id>: API ids may not
RESERVED_ID = re.compile(r"^TES-\d+$")
FLOW_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,35}$"
IUV_PATTERN = r"^[A-Za-z0-9 ]{1,35}$"

Amount = Annotated[Decimal, Field(gt=0, max_digits=13, decimal_places=2)]


class RiconciliazionePut(BaseModel):
    """The body of PUT /riconciliazioni/{idDominio}/{id}: one treasury movement and what it names."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    importo: Amount
    dataValuta: date | None = None  # noqa: N815 - GovPay's names
    dataContabile: date | None = None  # noqa: N815
    contoAccredito: str | None = None  # noqa: N815
    sct: str = Field(min_length=1, max_length=70)
    causale: str | None = Field(default=None, min_length=1, max_length=1024)
    iuv: str | None = Field(default=None, pattern=IUV_PATTERN)
    idFlusso: str | None = Field(default=None, pattern=FLOW_ID_PATTERN)  # noqa: N815

    @field_validator("contoAccredito")
    @classmethod
    def _iban(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_iban(value)
        except IdentifierError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _names_something(self) -> RiconciliazionePut:
        if not (self.causale or self.iuv or self.idFlusso):
            raise ValueError("one of causale, iuv, idFlusso is required")
        return self

    def canonical(self) -> dict[str, Any]:
        """The fields that identify the submission, normalised (what the idempotency hash covers)."""
        return {
            "importo": f"{self.importo:.2f}",
            "dataValuta": self.dataValuta.isoformat() if self.dataValuta else None,
            "dataContabile": self.dataContabile.isoformat() if self.dataContabile else None,
            "contoAccredito": self.contoAccredito,
            "sct": self.sct,
            "causale": self.causale,
            "iuv": self.iuv.replace(" ", "").upper() if self.iuv else None,
            "idFlusso": self.idFlusso,
        }

    def reference(self) -> RemittanceRef:
        """What the money names: an explicit idFlusso, else an explicit IUV, else what the causale says."""
        if self.idFlusso:
            return RemittanceRef(kind="flow", reference=self.idFlusso, integrative=0)
        if self.iuv:
            return RemittanceRef(kind="iuv", reference=self.iuv.replace(" ", "").upper())
        return parse_remittance(self.causale or "")

    def remittance(self) -> str:
        """The causale to store on the movement (the canonical pagoPA one when only an id was given)."""
        if self.causale:
            return self.causale
        if self.idFlusso:
            return f"/PUR/LGPE-RIVERSAMENTO/URI/{self.idFlusso}"
        return f"/RFB/{(self.iuv or '').replace(' ', '')}/{self.importo:.2f}"


def request_hash(canonical: dict[str, Any]) -> str:
    """SHA-256 of the canonical body: equal bodies (whatever their key order or spacing) hash alike."""
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_id(id_riconciliazione: str) -> str | None:
    """Why an idRiconciliazione is not acceptable, or None."""
    if not ID_PATTERN.fullmatch(id_riconciliazione):
        return "id: 1-35 caratteri tra lettere, cifre, '.', '_' e '-'"
    if RESERVED_ID.fullmatch(id_riconciliazione):
        return "id: il formato TES-<numero> e' riservato ai movimenti del giornale di cassa"
    return None
