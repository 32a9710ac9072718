"""The registry's editable entities for the console: fields, choices, validation by the registry's rules.

Each form is checked with the same pydantic specs `pagoflow config apply` uses (rules/registry.py), plus the
references to other rows, and written through store/registry.py so every change lands in registry_audit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlmodel import Session, SQLModel, col, select
from starlette.datastructures import FormData

from models.registry import (
    Application,
    ApplicationGrant,
    Broker,
    Creditor,
    DebtType,
    IbanAccount,
    Operator,
    OperatorGrant,
    RevenueType,
    Station,
)
from rules.credentials import hash_secret
from rules.identifiers import is_postal_iban
from rules.registry import (
    ApplicationSpec,
    CreditorSpec,
    DebtTypeSpec,
    IbanSpec,
    OperatorSpec,
    StationSpec,
    station_auth_problems,
)
from web.console.security import ConsoleUser

MIN_PASSWORD = 12
Choices = Callable[[Session, ConsoleUser], list[tuple[str, str]]]


class FormErrors(ValueError):
    """Problems of a submitted form, by field name (``_`` for the form as a whole)."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True)
class Field:
    """One input of a registry form."""

    name: str
    label: str
    kind: str = "text"  # text, number, bool, select, password, textarea, checkboxes
    key: bool = False  # part of the business key: set on creation, shown read-only afterwards
    choices: Choices | None = None
    required: bool = False
    maxlength: int | None = None


@dataclass
class Validated:
    """A valid form: the row's business key, its column values, and the grants to set (if any)."""

    key: dict[str, Any]
    values: dict[str, Any]
    grants: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Entity:
    """An editable registry entity."""

    slug: str
    title: str
    model: type[SQLModel]
    columns: tuple[tuple[str, str], ...]
    fields: tuple[Field, ...]
    key_fields: tuple[str, ...]
    every_ec_only: bool  # only administrators of every EC may see and edit it
    ec_of: Callable[[Any], str | None] = field(default=lambda row: None)
    initial: Callable[[Session, Any], dict[str, Any]] = field(default=lambda s, row: {})
    validate: Callable[[Session, ConsoleUser, dict[str, Any], Any], Validated] = field(
        default=lambda s, u, v, r: Validated({}, {})
    )

    def audit_key(self, row: Any) -> str:
        """The key registry_audit records for a row (as `config apply` writes it)."""
        return "/".join(str(getattr(row, k)) for k in self.key_fields)


# --- form values and pydantic errors ----------------------------------------------------------------


def read_form(entity: Entity, form: FormData) -> dict[str, Any]:
    """The submitted values of an entity's fields: trimmed text (None when empty), booleans, lists."""
    out: dict[str, Any] = {}
    for f in entity.fields:
        if f.kind == "bool":
            out[f.name] = form.get(f.name) not in (None, "", "0")
        elif f.kind == "checkboxes":
            out[f.name] = [str(v) for v in form.getlist(f.name)]
        else:
            raw = form.get(f.name)
            value = raw.strip() if isinstance(raw, str) and f.kind != "password" else raw
            out[f.name] = value if isinstance(value, str) and value != "" else None
    return out


def _spec(model: type[BaseModel], data: dict[str, Any], names: dict[str, str]) -> Any:
    """Validate with a registry spec; errors keyed by the form's field names."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if not loc and ":" in message:  # model-level checks say 'field: problem'
                name, _, message = message.partition(":")
                loc = (name.strip(),)
                message = message.strip()
            name = names.get(".".join(loc)) or (names.get(loc[0], loc[0]) if loc else "_")
            errors.setdefault(name, message)
        raise FormErrors(errors) from None


def _owning_ec(session: Session, user: ConsoleUser, v: dict[str, Any], row: Any) -> str:
    """The EC an EC-scoped entry belongs to (fixed once stored), checked to exist and be the user's."""
    id_dominio = row.id_dominio if row is not None else v["id_dominio"]
    if (
        not id_dominio
        or not user.can_see(id_dominio)
        or session.exec(select(Creditor).where(Creditor.id_dominio == id_dominio)).first() is None
    ):
        raise FormErrors({"id_dominio": "ente sconosciuto o non abilitato"})
    return str(id_dominio)


def _number(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.lstrip("-").isdigit():
        raise FormErrors({name: "deve essere un numero intero"})
    return int(value)


def _new_secret(value: str | None, name: str) -> str | None:
    if not value:
        return None
    if len(value) < MIN_PASSWORD:
        raise FormErrors({name: f"almeno {MIN_PASSWORD} caratteri"})
    return hash_secret(value)


# --- choices ---------------------------------------------------------------------------------------


def _stations(session: Session, _: ConsoleUser) -> list[tuple[str, str]]:
    return [
        (s, s) for s in session.exec(select(Station.id_stazione).order_by(col(Station.id_stazione))).all()
    ]


def _ecs(session: Session, user: ConsoleUser) -> list[tuple[str, str]]:
    stmt = select(Creditor).order_by(col(Creditor.id_dominio))
    return [
        (c.id_dominio, f"{c.id_dominio} {c.name}")
        for c in session.exec(stmt).all()
        if user.can_see(c.id_dominio)
    ]


def _fixed(*values: str) -> Choices:
    return lambda session, user: [(v, v) for v in values]


# --- creditors --------------------------------------------------------------------------------------


def _creditor_initial(session: Session, row: Creditor) -> dict[str, Any]:
    return {
        "id_dominio": row.id_dominio,
        "name": row.name,
        "station": row.id_stazione,
        "aux_digit": str(row.aux_digit),
        "segregation_code": row.segregation_code,
        "application_code": row.application_code,
        "iuv_prefix": row.iuv_prefix,
        "cbill": row.cbill,
        "gln": row.gln,
        "sector": row.sector,
        "address": row.address,
        "contacts": row.contacts,
        "reporting_enabled": row.reporting_enabled,
        "enabled": row.enabled,
    }


def _creditor_validate(
    session: Session, user: ConsoleUser, v: dict[str, Any], row: Creditor | None
) -> Validated:
    id_dominio = row.id_dominio if row is not None else v["id_dominio"]
    data = {
        **v,
        "id_dominio": id_dominio or "",
        "aux_digit": _number(v["aux_digit"], "aux_digit") or 0,
        "iuv_prefix": v["iuv_prefix"] or "",
        "name": v["name"] or "",
        "station": v["station"] or "",
    }
    spec = _spec(CreditorSpec, data, {})
    if session.exec(select(Station).where(Station.id_stazione == spec.station)).first() is None:
        raise FormErrors({"station": f"stazione {spec.station} sconosciuta"})
    if row is None and session.exec(select(Creditor).where(Creditor.id_dominio == spec.id_dominio)).first():
        raise FormErrors({"id_dominio": f"l'ente {spec.id_dominio} esiste gia'"})
    return Validated(
        {"id_dominio": spec.id_dominio},
        {
            "name": spec.name,
            "id_stazione": spec.station,
            "aux_digit": spec.aux_digit,
            "segregation_code": spec.segregation_code,
            "application_code": spec.application_code,
            "iuv_prefix": spec.iuv_prefix,
            "cbill": spec.cbill,
            "gln": spec.gln,
            "sector": spec.sector,
            "address": spec.address,
            "contacts": spec.contacts,
            "reporting_enabled": spec.reporting_enabled,
            "enabled": spec.enabled,
        },
    )


CREDITORS = Entity(
    slug="creditors",
    title="Enti creditori",
    model=Creditor,
    columns=(
        ("id_dominio", "Codice fiscale"),
        ("name", "Denominazione"),
        ("id_stazione", "Stazione"),
        ("segregation_code", "Codice segregazione"),
        ("enabled", "Abilitato"),
    ),
    fields=(
        Field("id_dominio", "Codice fiscale", key=True, required=True, maxlength=11),
        Field("name", "Denominazione", required=True, maxlength=140),
        Field("station", "Stazione", kind="select", choices=_stations, required=True),
        Field("aux_digit", "Cifra ausiliaria", kind="select", choices=_fixed("3", "0")),
        Field("segregation_code", "Codice segregazione", maxlength=2),
        Field("application_code", "Codice applicazione", maxlength=2),
        Field("iuv_prefix", "Prefisso IUV", maxlength=12),
        Field("cbill", "Codice CBILL", maxlength=5),
        Field("gln", "GLN", maxlength=13),
        Field("sector", "Settore", maxlength=140),
        Field("address", "Indirizzo", maxlength=200),
        Field("contacts", "Contatti", maxlength=200),
        Field("reporting_enabled", "Rendicontazione attiva", kind="bool"),
        Field("enabled", "Abilitato", kind="bool"),
    ),
    key_fields=("id_dominio",),
    every_ec_only=False,
    ec_of=lambda row: row.id_dominio,
    initial=_creditor_initial,
    validate=_creditor_validate,
)


# --- stations ----------------------------------------------------------------------------------------


def _station_initial(session: Session, row: Station) -> dict[str, Any]:
    return {
        "id_stazione": row.id_stazione,
        "version": str(row.version),
        "password_ref": row.password_ref,
        "api_key_ref": row.api_key_ref,
        "publication": row.publication,
        "reporting": row.reporting,
        "legacy_rpt": row.legacy_rpt,
        "checkout": row.checkout,
        "auth_method": row.auth_method,
        "auth_secret_ref": row.auth_secret_ref,
        "allowed_ips": row.allowed_ips,
        "enabled": row.enabled,
    }


def _station_validate(
    session: Session, user: ConsoleUser, v: dict[str, Any], row: Station | None
) -> Validated:
    id_stazione = row.id_stazione if row is not None else (v["id_stazione"] or "")
    ips = [ip.strip() for ip in (v["allowed_ips"] or "").split(",") if ip.strip()]
    data = {
        "id_stazione": id_stazione,
        "version": _number(v["version"], "version") or 2,
        "password_ref": v["password_ref"],
        "api_key_ref": v["api_key_ref"],
        "publication": v["publication"] or "GPD",
        "reporting": v["reporting"] or "FDR_REST",
        "legacy_rpt": v["legacy_rpt"],
        "checkout": v["checkout"],
        "enabled": v["enabled"],
        "auth": {
            "method": v["auth_method"] or "SUBSCRIPTION_KEY",
            "secret_ref": v["auth_secret_ref"],
            "allowed_ips": ips,
        },
    }
    spec = _spec(
        StationSpec,
        data,
        {
            "auth.method": "auth_method",
            "auth.secret_ref": "auth_secret_ref",
            "auth.allowed_ips": "allowed_ips",
            "auth": "auth_method",
        },
    )
    broker = session.exec(select(Broker)).first()
    if broker is None:
        raise FormErrors({"_": "nessun intermediario nell'anagrafica: applicare prima il file del registro"})
    if not spec.id_stazione.startswith(broker.id_intermediario + "_"):
        raise FormErrors({"id_stazione": "deve iniziare con il codice fiscale dell'intermediario"})
    auth_fields = {"auth.secret_ref": "auth_secret_ref"}
    if problems := station_auth_problems(spec.auth):  # the same check as the registry file's
        raise FormErrors({auth_fields.get(f, "allowed_ips"): why for f, why in problems})
    if row is None and session.exec(select(Station).where(Station.id_stazione == spec.id_stazione)).first():
        raise FormErrors({"id_stazione": f"la stazione {spec.id_stazione} esiste gia'"})
    return Validated(
        {"id_stazione": spec.id_stazione},
        {
            "id_intermediario": broker.id_intermediario,
            "version": spec.version,
            "password_ref": spec.password_ref,
            "api_key_ref": spec.api_key_ref,
            "publication": spec.publication,
            "reporting": spec.reporting,
            "legacy_rpt": spec.legacy_rpt,
            "checkout": spec.checkout,
            "auth_method": spec.auth.method,
            "auth_secret_ref": spec.auth.secret_ref,
            "allowed_ips": ",".join(spec.auth.allowed_ips) or None,
            "enabled": spec.enabled,
        },
    )


STATIONS = Entity(
    slug="stations",
    title="Stazioni",
    model=Station,
    columns=(
        ("id_stazione", "Stazione"),
        ("version", "Versione primitive"),
        ("publication", "Modalità di pubblicazione"),
        ("reporting", "Modalità di rendicontazione"),
        ("enabled", "Abilitato"),
    ),
    fields=(
        Field("id_stazione", "Stazione", key=True, required=True, maxlength=14),
        Field("version", "Versione primitive", kind="select", choices=_fixed("2", "1")),
        Field("password_ref", "Riferimento password stazione", maxlength=200),
        Field("api_key_ref", "Riferimento chiave API", maxlength=200),
        Field(
            "publication", "Modalità di pubblicazione", kind="select", choices=_fixed("GPD", "ACA", "NONE")
        ),
        Field("reporting", "Modalità di rendicontazione", kind="select", choices=_fixed("FDR_REST", "SOAP")),
        Field("legacy_rpt", "RPT/RT legacy", kind="bool"),
        Field("checkout", "Checkout", kind="bool"),
        Field(
            "auth_method",
            "Autenticazione in ingresso",
            kind="select",
            choices=_fixed("SUBSCRIPTION_KEY", "CLIENT_CERT_HEADER", "IP_ALLOW_LIST"),
        ),
        Field("auth_secret_ref", "Riferimento segreto in ingresso", maxlength=200),
        Field("allowed_ips", "Indirizzi IP ammessi (separati da virgola)", maxlength=1000),
        Field("enabled", "Abilitato", kind="bool"),
    ),
    key_fields=("id_stazione",),
    every_ec_only=True,
    initial=_station_initial,
    validate=_station_validate,
)


# --- IBANs ---------------------------------------------------------------------------------------------


def _iban_initial(session: Session, row: IbanAccount) -> dict[str, Any]:
    return {
        "id_dominio": row.id_dominio,
        "iban": row.iban,
        "bic": row.bic,
        "postal": "yes" if row.postal else "no",
        "treasury": row.treasury,
        "description": row.description,
        "enabled": row.enabled,
    }


def _iban_validate(
    session: Session, user: ConsoleUser, v: dict[str, Any], row: IbanAccount | None
) -> Validated:
    id_dominio = _owning_ec(session, user, v, row)
    postal = {"yes": True, "no": False}.get(v["postal"] or "")
    spec = _spec(
        IbanSpec,
        {
            "iban": row.iban if row is not None else (v["iban"] or ""),
            "bic": v["bic"],
            "postal": postal,
            "treasury": v["treasury"],
            "description": v["description"],
            "enabled": v["enabled"],
        },
        {},
    )
    if (
        row is None
        and session.exec(
            select(IbanAccount).where(IbanAccount.id_dominio == id_dominio, IbanAccount.iban == spec.iban)
        ).first()
    ):
        raise FormErrors({"iban": f"l'IBAN {spec.iban} e' gia' registrato per l'ente"})
    return Validated(
        {"id_dominio": id_dominio, "iban": spec.iban},
        {
            "bic": spec.bic,
            "postal": is_postal_iban(spec.iban) if spec.postal is None else spec.postal,
            "treasury": spec.treasury,
            "description": spec.description,
            "enabled": spec.enabled,
        },
    )


IBANS = Entity(
    slug="ibans",
    title="IBAN",
    model=IbanAccount,
    columns=(
        ("id_dominio", "Ente"),
        ("iban", "IBAN"),
        ("postal", "Conto postale"),
        ("treasury", "Conto di tesoreria"),
        ("enabled", "Abilitato"),
    ),
    fields=(
        Field("id_dominio", "Ente", kind="select", key=True, choices=_ecs, required=True),
        Field("iban", "IBAN", key=True, required=True, maxlength=34),
        Field("bic", "BIC", maxlength=11),
        Field(
            "postal",
            "Conto postale",
            kind="select",
            choices=lambda s, u: [("", "Automatico"), ("yes", "Sì"), ("no", "No")],
        ),
        Field("treasury", "Conto di tesoreria", kind="bool"),
        Field("description", "Descrizione", maxlength=140),
        Field("enabled", "Abilitato", kind="bool"),
    ),
    key_fields=("id_dominio", "iban"),
    every_ec_only=False,
    ec_of=lambda row: row.id_dominio,
    initial=_iban_initial,
    validate=_iban_validate,
)


# --- debt types ----------------------------------------------------------------------------------------


def _debt_type_initial(session: Session, row: DebtType) -> dict[str, Any]:
    return {
        "id_dominio": row.id_dominio,
        "code": row.code,
        "description": row.description,
        "taxonomy": row.taxonomy,
        "iuv_prefix": row.iuv_prefix,
        "default_revenue_code": row.default_revenue_code,
        "enabled": row.enabled,
    }


def _debt_type_validate(
    session: Session, user: ConsoleUser, v: dict[str, Any], row: DebtType | None
) -> Validated:
    id_dominio = _owning_ec(session, user, v, row)
    spec = _spec(
        DebtTypeSpec,
        {
            "code": row.code if row is not None else (v["code"] or ""),
            "description": v["description"] or "",
            "taxonomy": v["taxonomy"],
            "iuv_prefix": v["iuv_prefix"],
            "default_revenue_code": v["default_revenue_code"],
        },
        {},
    )
    if (
        spec.default_revenue_code
        and session.exec(
            select(RevenueType).where(
                RevenueType.id_dominio == id_dominio, RevenueType.code == spec.default_revenue_code
            )
        ).first()
        is None
    ):
        raise FormErrors(
            {"default_revenue_code": f"tipo entrata {spec.default_revenue_code} sconosciuto per l'ente"}
        )
    if (
        row is None
        and session.exec(
            select(DebtType).where(DebtType.id_dominio == id_dominio, DebtType.code == spec.code)
        ).first()
    ):
        raise FormErrors({"code": f"il tipo pendenza {spec.code} esiste gia' per l'ente"})
    return Validated(
        {"id_dominio": id_dominio, "code": spec.code},
        {
            "description": spec.description,
            "taxonomy": spec.taxonomy,
            "iuv_prefix": spec.iuv_prefix,
            "default_revenue_code": spec.default_revenue_code,
            "enabled": v["enabled"],
        },
    )


DEBT_TYPES = Entity(
    slug="debt-types",
    title="Tipi pendenza",
    model=DebtType,
    columns=(
        ("id_dominio", "Ente"),
        ("code", "Codice"),
        ("description", "Descrizione"),
        ("taxonomy", "Tassonomia"),
        ("enabled", "Abilitato"),
    ),
    fields=(
        Field("id_dominio", "Ente", kind="select", key=True, choices=_ecs, required=True),
        Field("code", "Codice", key=True, required=True, maxlength=35),
        Field("description", "Descrizione", required=True, maxlength=140),
        Field("taxonomy", "Tassonomia", maxlength=140),
        Field("iuv_prefix", "Prefisso IUV", maxlength=12),
        Field("default_revenue_code", "Codice entrata predefinito", maxlength=35),
        Field("enabled", "Abilitato", kind="bool"),
    ),
    key_fields=("id_dominio", "code"),
    every_ec_only=False,
    ec_of=lambda row: row.id_dominio,
    initial=_debt_type_initial,
    validate=_debt_type_validate,
)


# --- applications -------------------------------------------------------------------------------------


def _application_initial(session: Session, row: Application) -> dict[str, Any]:
    grants = session.exec(
        select(ApplicationGrant)
        .where(ApplicationGrant.id_a2a == row.id_a2a)
        .order_by(col(ApplicationGrant.id_dominio), col(ApplicationGrant.debt_type))
    ).all()
    return {
        "id_a2a": row.id_a2a,
        "name": row.name,
        "principal": row.principal,
        "own_iuv": row.own_iuv,
        "all_creditors": row.all_creditors,
        "notification_url": row.notification_url,
        "notification_auth": row.notification_auth,
        "notification_user": row.notification_user,
        "notification_secret_ref": row.notification_secret_ref,
        "enabled": row.enabled,
        "grants": "\n".join(
            g.id_dominio if g.debt_type == "*" else f"{g.id_dominio}:{g.debt_type}" for g in grants
        ),
    }


def _parse_grants(text: str | None) -> list[dict[str, Any]]:
    by_ec: dict[str, list[str]] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        ec, _, debt_type = line.partition(":")
        by_ec.setdefault(ec.strip(), []).append(debt_type.strip() or "*")
    return [{"id_dominio": ec, "debt_types": types} for ec, types in by_ec.items()]


def _application_validate(
    session: Session, user: ConsoleUser, v: dict[str, Any], row: Application | None
) -> Validated:
    notification = None
    if v["notification_url"]:
        notification = {
            "url": v["notification_url"],
            "auth": v["notification_auth"] or "NONE",
            "user": v["notification_user"],
            "secret_ref": v["notification_secret_ref"],
        }
    grants = _parse_grants(v["grants"])
    spec = _spec(
        ApplicationSpec,
        {
            "id_a2a": row.id_a2a if row is not None else (v["id_a2a"] or ""),
            "name": v["name"] or "",
            "principal": v["principal"] or "",
            "own_iuv": v["own_iuv"],
            "all_creditors": v["all_creditors"],
            "notification": notification,
            "grants": grants,
            "enabled": v["enabled"],
        },
        {
            "notification.url": "notification_url",
            "notification.auth": "notification_auth",
            "notification.secret_ref": "notification_secret_ref",
            "notification.user": "notification_user",
            "notification": "notification_url",
            "grants": "grants",
        },
    )
    if spec.notification and spec.notification.auth != "NONE" and not spec.notification.secret_ref:
        raise FormErrors(
            {"notification_secret_ref": f"obbligatorio con autenticazione {spec.notification.auth}"}
        )
    other = session.exec(select(Application).where(Application.principal == spec.principal)).first()
    if other is not None and other.id_a2a != spec.id_a2a:
        raise FormErrors({"principal": f"{spec.principal!r} e' usato dall'applicazione {other.id_a2a}"})
    if row is None and session.exec(select(Application).where(Application.id_a2a == spec.id_a2a)).first():
        raise FormErrors({"id_a2a": f"l'applicazione {spec.id_a2a} esiste gia'"})
    for grant in spec.grants:
        if session.exec(select(Creditor).where(Creditor.id_dominio == grant.id_dominio)).first() is None:
            raise FormErrors({"grants": f"ente {grant.id_dominio} sconosciuto"})
        known = set(session.exec(select(DebtType.code).where(DebtType.id_dominio == grant.id_dominio)).all())
        unknown = [t for t in grant.debt_types if t != "*" and t not in known]
        if unknown:
            raise FormErrors(
                {"grants": f"tipo pendenza {unknown[0]} sconosciuto per l'ente {grant.id_dominio}"}
            )
    values: dict[str, Any] = {
        "name": spec.name,
        "principal": spec.principal,
        "own_iuv": spec.own_iuv,
        "all_creditors": spec.all_creditors,
        "enabled": spec.enabled,
        "notification_url": spec.notification.url if spec.notification else None,
        "notification_auth": spec.notification.auth if spec.notification else "NONE",
        "notification_user": spec.notification.user if spec.notification else None,
        "notification_secret_ref": spec.notification.secret_ref if spec.notification else None,
    }
    password = _new_secret(v["new_password"], "new_password")
    api_key = _new_secret(v["new_api_key"], "new_api_key")
    if password:
        values["password_hash"] = password
    if api_key:
        values["api_key_hash"] = api_key
    return Validated(
        {"id_a2a": spec.id_a2a},
        values,
        grants=[{"id_dominio": g.id_dominio, "debt_type": t} for g in spec.grants for t in g.debt_types],
    )


APPLICATIONS = Entity(
    slug="applications",
    title="Applicazioni",
    model=Application,
    columns=(
        ("id_a2a", "Identificativo (idA2A)"),
        ("name", "Denominazione"),
        ("principal", "Principal"),
        ("notification_url", "URL notifiche"),
        ("enabled", "Abilitato"),
    ),
    fields=(
        Field("id_a2a", "Identificativo (idA2A)", key=True, required=True, maxlength=35),
        Field("name", "Denominazione", required=True, maxlength=140),
        Field("principal", "Principal", required=True, maxlength=140),
        Field("new_password", "Nuova password (lasciare vuoto per non cambiarla)", kind="password"),
        Field("new_api_key", "Nuova chiave API (lasciare vuoto per non cambiarla)", kind="password"),
        Field("own_iuv", "IUV propri", kind="bool"),
        Field("all_creditors", "Tutti gli enti", kind="bool"),
        Field("notification_url", "URL notifiche", maxlength=500),
        Field(
            "notification_auth",
            "Autenticazione notifiche",
            kind="select",
            choices=_fixed("NONE", "BASIC", "API_KEY", "BEARER"),
        ),
        Field("notification_user", "Utente notifiche", maxlength=140),
        Field("notification_secret_ref", "Riferimento segreto notifiche", maxlength=200),
        Field("grants", "Abilitazioni (una per riga: ente oppure ente:tipo pendenza)", kind="textarea"),
        Field("enabled", "Abilitato", kind="bool"),
    ),
    key_fields=("id_a2a",),
    every_ec_only=True,
    initial=_application_initial,
    validate=_application_validate,
)


# --- operators -----------------------------------------------------------------------------------------


def _operator_initial(session: Session, row: Operator) -> dict[str, Any]:
    creditors = session.exec(
        select(OperatorGrant.id_dominio).where(OperatorGrant.username == row.username)
    ).all()
    return {
        "username": row.username,
        "full_name": row.full_name,
        "email": row.email,
        "role": row.role,
        "all_creditors": row.all_creditors,
        "creditors": list(creditors),
        "enabled": row.enabled,
        "unlock": False,
        "_failed_logins": row.failed_logins,
        "_locked_until": row.locked_until,
    }


def _operator_validate(
    session: Session, user: ConsoleUser, v: dict[str, Any], row: Operator | None
) -> Validated:
    username = row.username if row is not None else (v["username"] or "")
    spec = _spec(
        OperatorSpec,
        {
            "username": username,
            "full_name": v["full_name"] or "",
            "email": v["email"],
            "role": v["role"] or "READONLY",
            "all_creditors": v["all_creditors"],
            "creditors": v["creditors"],
            "enabled": v["enabled"],
        },
        {},
    )
    known = set(session.exec(select(Creditor.id_dominio)).all())
    unknown = [c for c in spec.creditors if c not in known]
    if unknown:
        raise FormErrors({"creditors": f"ente {unknown[0]} sconosciuto"})
    if row is None and session.exec(select(Operator).where(Operator.username == spec.username)).first():
        raise FormErrors({"username": f"l'operatore {spec.username} esiste gia'"})
    if spec.username == user.username and (
        spec.role != "ADMIN" or not spec.enabled or not spec.all_creditors
    ):
        raise FormErrors({"role": "non puoi togliere a te stesso il ruolo di amministratore o l'accesso"})
    values: dict[str, Any] = {
        "full_name": spec.full_name,
        "email": spec.email,
        "role": spec.role,
        "all_creditors": spec.all_creditors,
        "enabled": spec.enabled,
    }
    password = _new_secret(v["new_password"], "new_password")
    if password:
        values["password_hash"] = password
    if v["unlock"] or password:
        values |= {"failed_logins": 0, "locked_until": None}
    return Validated({"username": spec.username}, values, grants=[{"id_dominio": c} for c in spec.creditors])


OPERATORS = Entity(
    slug="operators",
    title="Operatori",
    model=Operator,
    columns=(
        ("username", "Utente"),
        ("full_name", "Nome e cognome"),
        ("role", "Ruolo"),
        ("all_creditors", "Tutti gli enti"),
        ("enabled", "Abilitato"),
    ),
    fields=(
        Field("username", "Utente", key=True, required=True, maxlength=140),
        Field("full_name", "Nome e cognome", required=True, maxlength=140),
        Field("email", "Email", maxlength=254),
        Field("new_password", "Nuova password (lasciare vuoto per non cambiarla)", kind="password"),
        Field("role", "Ruolo", kind="select", choices=_fixed("READONLY", "OPERATOR", "ADMIN")),
        Field("all_creditors", "Tutti gli enti", kind="bool"),
        Field("creditors", "Enti abilitati", kind="checkboxes", choices=_ecs),
        Field("unlock", "Sblocca l'accesso", kind="bool"),
        Field("enabled", "Abilitato", kind="bool"),
    ),
    key_fields=("username",),
    every_ec_only=True,
    initial=_operator_initial,
    validate=_operator_validate,
)


ENTITIES = {e.slug: e for e in (CREDITORS, STATIONS, IBANS, DEBT_TYPES, APPLICATIONS, OPERATORS)}
GRANTS = {"applications": (ApplicationGrant, "id_a2a"), "operators": (OperatorGrant, "username")}
