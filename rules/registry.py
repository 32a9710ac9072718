"""The registry file: its typed shape and every check, so that a bad file is refused before anything is applied."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rules.credentials import is_hash
from rules.identifiers import IdentifierError, validate_ec_fiscal_code, validate_iban

_SECRET_REF = r"^(env|block):[A-Za-z0-9_\-./]+$"


class RegistryError(ValueError):
    """The registry file is invalid; ``problems`` lists (entry, field, message) for every fault found."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        lines = [f"{entry}: {field_}: {message}" if field_ else f"{entry}: {message}"
                 for entry, field_, message in problems]
        super().__init__("invalid registry:\n  " + "\n  ".join(lines))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class BrokerSpec(_Spec):
    """The intermediary."""

    id_intermediario: str = Field(pattern=r"^[0-9]{11}$")
    name: str = Field(min_length=1, max_length=140)


class StationAuthSpec(_Spec):
    """How pagoPA authenticates to our station."""

    method: Literal["SUBSCRIPTION_KEY", "CLIENT_CERT_HEADER", "IP_ALLOW_LIST"] = "SUBSCRIPTION_KEY"
    secret_ref: str | None = Field(default=None, pattern=_SECRET_REF)
    allowed_ips: list[str] = Field(default_factory=list)


def station_auth_problems(auth: StationAuthSpec) -> list[tuple[str, str]]:
    """What would make a station refuse every caller: (field, why) for a missing secret or a bad address.

    An allow-list entry is an address or a network written with its own address (``203.0.113.0/28``); one
    with host bits (``10.0.0.5/24``) is refused, as the station would match nobody with it.
    """
    if auth.method != "IP_ALLOW_LIST":
        return [] if auth.secret_ref else [("auth.secret_ref", f"required with method {auth.method}")]
    if not auth.allowed_ips:
        return [("auth.allowed_ips", "required with method IP_ALLOW_LIST")]
    problems = []
    for j, entry in enumerate(auth.allowed_ips):
        try:
            ipaddress.ip_network(entry.strip())
        except ValueError as exc:
            problems.append((f"auth.allowed_ips[{j}]", f"{entry!r} is not an address or network: {exc}"))
    return problems


class StationSpec(_Spec):
    """A station of the broker."""

    id_stazione: str = Field(pattern=r"^[0-9]{11}_[0-9]{2}$")
    version: Literal[1, 2] = 2
    password_ref: str | None = Field(default=None, pattern=_SECRET_REF)
    api_key_ref: str | None = Field(default=None, pattern=_SECRET_REF)
    publication: Literal["GPD", "ACA", "NONE"] = "GPD"
    reporting: Literal["FDR_REST", "SOAP"] = "FDR_REST"
    legacy_rpt: bool = False
    checkout: bool = False
    auth: StationAuthSpec = StationAuthSpec()
    enabled: bool = True


class IbanSpec(_Spec):
    """An account of an EC."""

    iban: str
    bic: str | None = Field(default=None, pattern=r"^[A-Z0-9]{8}([A-Z0-9]{3})?$")
    postal: bool | None = None
    treasury: bool = False
    description: str | None = Field(default=None, max_length=140)
    enabled: bool = True

    @field_validator("iban")
    @classmethod
    def _iban(cls, value: str) -> str:
        try:
            return validate_iban(value)
        except IdentifierError as exc:
            raise ValueError(str(exc)) from exc


class UnitSpec(_Spec):
    """An organisational unit."""

    code: str = Field(min_length=1, max_length=35)
    name: str = Field(min_length=1, max_length=140)


class DebtTypeSpec(_Spec):
    """A debt type."""

    code: str = Field(min_length=1, max_length=35)
    description: str = Field(min_length=1, max_length=140)
    taxonomy: str | None = Field(default=None, max_length=140)
    iuv_prefix: str | None = Field(default=None, pattern=r"^[0-9]{0,12}$")
    default_revenue_code: str | None = None


class RevenueTypeSpec(_Spec):
    """A revenue type (codEntrata)."""

    code: str = Field(min_length=1, max_length=35)
    description: str = Field(min_length=1, max_length=140)
    iban: str
    support_iban: str | None = None
    accounting_type: Literal["CAPITOLO", "SPECIALE", "SIOPE", "ALTRO"] = "ALTRO"
    accounting_code: str = Field(min_length=1, max_length=140)

    @field_validator("iban", "support_iban")
    @classmethod
    def _iban(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_iban(value)
        except IdentifierError as exc:
            raise ValueError(str(exc)) from exc


class CreditorSpec(_Spec):
    """A creditor EC with everything it owns."""

    id_dominio: str
    name: str = Field(min_length=1, max_length=140)
    station: str
    aux_digit: Literal[0, 3] = 3
    segregation_code: str | None = Field(default=None, pattern=r"^[0-9]{2}$")
    application_code: str | None = Field(default=None, pattern=r"^[0-9]{2}$")
    iuv_prefix: str = Field(default="", pattern=r"^[0-9]{0,12}$")
    cbill: str | None = Field(default=None, pattern=r"^[A-Z0-9]{5}$")
    gln: str | None = Field(default=None, pattern=r"^[0-9]{13}$")
    logo: str | None = None
    sector: str | None = Field(default=None, max_length=140)
    address: str | None = Field(default=None, max_length=200)
    contacts: str | None = Field(default=None, max_length=200)
    reporting_enabled: bool = True
    enabled: bool = True
    ibans: list[IbanSpec] = Field(default_factory=list)
    units: list[UnitSpec] = Field(default_factory=list)
    debt_types: list[DebtTypeSpec] = Field(default_factory=list)
    revenue_types: list[RevenueTypeSpec] = Field(default_factory=list)

    @field_validator("id_dominio")
    @classmethod
    def _fiscal_code(cls, value: str) -> str:
        try:
            validate_ec_fiscal_code(value)
        except IdentifierError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _codes(self) -> CreditorSpec:
        if self.aux_digit == 3 and not self.segregation_code:
            raise ValueError("segregation_code: required with aux_digit 3")
        if self.aux_digit == 0 and not self.application_code:
            raise ValueError("application_code: required with aux_digit 0")
        _unique(self.ibans, "iban", "ibans")
        _unique(self.units, "code", "units")
        _unique(self.debt_types, "code", "debt_types")
        _unique(self.revenue_types, "code", "revenue_types")
        return self


class GrantSpec(_Spec):
    """An EC an application may use, for all or some debt types."""

    id_dominio: str = Field(pattern=r"^[0-9]{11}$")
    debt_types: list[str] = Field(default_factory=lambda: ["*"])


class NotificationSpec(_Spec):
    """Where and how receipts are notified to an application."""

    url: str = Field(pattern=r"^https?://")
    auth: Literal["NONE", "BASIC", "API_KEY", "BEARER"] = "NONE"
    user: str | None = None
    secret_ref: str | None = Field(default=None, pattern=_SECRET_REF)


class ApplicationSpec(_Spec):
    """An EC application (idA2A) and its credentials (hashes only)."""

    id_a2a: str = Field(pattern=r"^[A-Za-z0-9_\-.]{1,35}$")
    name: str = Field(min_length=1, max_length=140)
    principal: str = Field(min_length=1, max_length=140)
    password_hash: str | None = None
    api_key_hash: str | None = None
    own_iuv: bool = False
    all_creditors: bool = False
    notification: NotificationSpec | None = None
    grants: list[GrantSpec] = Field(default_factory=list)
    enabled: bool = True

    @field_validator("password_hash", "api_key_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value is not None and not is_hash(value):
            raise ValueError("must be a hash made by 'pagoflow config hash-secret', never a clear secret")
        return value


class OperatorSpec(_Spec):
    """An operator, with role and ECs."""

    username: str = Field(min_length=1, max_length=140)
    full_name: str = Field(min_length=1, max_length=140)
    email: str | None = None
    password_hash: str | None = None
    role: Literal["ADMIN", "OPERATOR", "READONLY"] = "READONLY"
    all_creditors: bool = False
    creditors: list[str] = Field(default_factory=list)
    enabled: bool = True

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value is not None and not is_hash(value):
            raise ValueError("must be a hash made by 'pagoflow config hash-secret', never a clear secret")
        return value


class TreasurySourceSpec(_Spec):
    """An SFTP directory where the treasury bank drops an EC's account journal."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-.]{1,80}$")
    id_dominio: str = Field(pattern=r"^[0-9]{11}$")
    account: str
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=140)
    password_ref: str | None = Field(default=None, pattern=_SECRET_REF)
    private_key_ref: str | None = Field(default=None, pattern=_SECRET_REF)
    known_hosts: str = Field(min_length=1, description="known_hosts file that pins the server's host key")
    remote_dir: str = "."
    pattern: str = "*"
    archive_dir: str | None = None
    format: Literal["OPI", "CBI_RH", "CAMT053", "CAMT054", "MT940", "CSV"] | None = None
    csv_mapping: dict[str, Any] | None = None
    enabled: bool = True

    @field_validator("account")
    @classmethod
    def _iban(cls, value: str) -> str:
        try:
            return validate_iban(value)
        except IdentifierError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _credentials(self) -> TreasurySourceSpec:
        if not self.password_ref and not self.private_key_ref:
            raise ValueError("password_ref or private_key_ref: one is required")
        return self


class RegistrySpec(_Spec):
    """The whole registry file."""

    broker: BrokerSpec
    stations: list[StationSpec] = Field(default_factory=list)
    creditors: list[CreditorSpec] = Field(default_factory=list)
    applications: list[ApplicationSpec] = Field(default_factory=list)
    operators: list[OperatorSpec] = Field(default_factory=list)
    treasury_sources: list[TreasurySourceSpec] = Field(default_factory=list)


def _unique(items: list[Any], attr: str, where: str) -> None:
    seen: set[Any] = set()
    for item in items:
        key = getattr(item, attr)
        if key in seen:
            raise ValueError(f"{where}: {attr} {key!r} appears twice")
        seen.add(key)


_ENTRY_KEYS = {"stations": "id_stazione", "creditors": "id_dominio", "applications": "id_a2a",
               "operators": "username", "treasury_sources": "name"}


def _entry_name(data: Any, loc: tuple[Any, ...]) -> tuple[str, str]:
    """Turn a pydantic location into ('creditors[1] (01234567890)', 'ibans[0].iban')."""
    if not loc:
        return "registry", ""
    section = str(loc[0])
    if len(loc) >= 2 and isinstance(loc[1], int):
        entry = f"{section}[{loc[1]}]"
        try:
            raw = data[section][loc[1]]
            key = raw.get(_ENTRY_KEYS.get(section, ""))
            if key is not None:
                entry += f" ({key})"
        except (KeyError, IndexError, TypeError):
            pass
        rest = loc[2:]
    else:
        entry, rest = section, loc[1:]
    field_ = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest).lstrip(".")
    return entry, field_


def parse_registry(data: Any) -> RegistrySpec:
    """Validate a registry document (as loaded from YAML) completely, or raise RegistryError listing all faults."""
    if not isinstance(data, dict):
        raise RegistryError([("registry", "", "the file must be a mapping with broker, stations, creditors…")])
    try:
        spec = RegistrySpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            entry, field_ = _entry_name(data, tuple(err["loc"]))
            message = err["msg"].removeprefix("Value error, ")
            problems.append((entry, field_, message))
        raise RegistryError(problems) from None
    problems = cross_check(spec)
    if problems:
        raise RegistryError(problems)
    return spec


def cross_check(spec: RegistrySpec) -> list[tuple[str, str, str]]:
    """References between entries: stations of ECs, ECs of grants and operators, uniqueness of keys."""
    problems: list[tuple[str, str, str]] = []
    stations = {s.id_stazione for s in spec.stations}
    creditors = {c.id_dominio: c for c in spec.creditors}
    for kind, items, attr in (("stations", spec.stations, "id_stazione"), ("creditors", spec.creditors, "id_dominio"),
                              ("applications", spec.applications, "id_a2a"),
                              ("operators", spec.operators, "username")):
        seen: set[str] = set()
        for i, item in enumerate(items):
            key = getattr(item, attr)
            if key in seen:
                problems.append((f"{kind}[{i}] ({key})", attr, "appears twice"))
            seen.add(key)
    principals: set[str] = set()
    for i, station in enumerate(spec.stations):
        entry = f"stations[{i}] ({station.id_stazione})"
        if not station.id_stazione.startswith(spec.broker.id_intermediario + "_"):
            problems.append((entry, "id_stazione", "must start with the broker's fiscal code"))
        problems += [(entry, field, why) for field, why in station_auth_problems(station.auth)]
    for i, creditor in enumerate(spec.creditors):
        entry = f"creditors[{i}] ({creditor.id_dominio})"
        if creditor.station not in stations:
            problems.append((entry, "station", f"unknown station {creditor.station!r}"))
        ibans = {a.iban for a in creditor.ibans}
        for j, revenue in enumerate(creditor.revenue_types):
            if revenue.iban not in ibans:
                problems.append((entry, f"revenue_types[{j}].iban", f"{revenue.iban} is not one of the EC's ibans"))
        revenue_codes = {r.code for r in creditor.revenue_types}
        for j, debt_type in enumerate(creditor.debt_types):
            if debt_type.default_revenue_code and debt_type.default_revenue_code not in revenue_codes:
                problems.append((entry, f"debt_types[{j}].default_revenue_code",
                                 f"unknown revenue type {debt_type.default_revenue_code!r}"))
    for i, app in enumerate(spec.applications):
        entry = f"applications[{i}] ({app.id_a2a})"
        if app.principal in principals:
            problems.append((entry, "principal", f"{app.principal!r} is used by another application"))
        principals.add(app.principal)
        if app.notification and app.notification.auth != "NONE" and not app.notification.secret_ref:
            problems.append((entry, "notification.secret_ref", f"required with auth {app.notification.auth}"))
        for j, grant in enumerate(app.grants):
            creditor = creditors.get(grant.id_dominio)
            if creditor is None:
                problems.append((entry, f"grants[{j}].id_dominio", f"unknown EC {grant.id_dominio}"))
                continue
            known = {d.code for d in creditor.debt_types}
            for code in grant.debt_types:
                if code != "*" and code not in known:
                    problems.append((entry, f"grants[{j}].debt_types", f"unknown debt type {code!r}"))
    for i, source in enumerate(spec.treasury_sources):
        entry = f"treasury_sources[{i}] ({source.name})"
        creditor = creditors.get(source.id_dominio)
        if creditor is None:
            problems.append((entry, "id_dominio", f"unknown EC {source.id_dominio}"))
        elif source.account not in {a.iban for a in creditor.ibans}:
            problems.append((entry, "account", f"{source.account} is not one of the EC's ibans"))
    for i, op in enumerate(spec.operators):
        for code in op.creditors:
            if code not in creditors:
                problems.append((f"operators[{i}] ({op.username})", "creditors", f"unknown EC {code}"))
    return problems
