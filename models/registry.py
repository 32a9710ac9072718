"""The registry: broker, stations, creditor ECs and their IBANs, units, debt and revenue types, users."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import created_field, enum_field, json_field, ts_field


class PublicationMode(StrEnum):
    """Where a station's positions are published."""

    GPD = "GPD"
    ACA = "ACA"
    NONE = "NONE"


class ReportingMode(StrEnum):
    """How a station's reporting flows are downloaded."""

    FDR_REST = "FDR_REST"
    SOAP = "SOAP"


class StationAuth(StrEnum):
    """How the station authenticates pagoPA when it calls us."""

    SUBSCRIPTION_KEY = "SUBSCRIPTION_KEY"
    CLIENT_CERT_HEADER = "CLIENT_CERT_HEADER"
    IP_ALLOW_LIST = "IP_ALLOW_LIST"


class Broker(SQLModel, table=True):
    """The intermediary (idBrokerPA) this installation acts as."""

    __tablename__ = "broker"
    id: int | None = Field(default=None, primary_key=True)
    id_intermediario: str = Field(max_length=11, unique=True, index=True)
    name: str = Field(max_length=140)
    created_at: datetime = created_field()
    updated_at: datetime | None = ts_field()


class Station(SQLModel, table=True):
    """A station of the broker registered at pagoPA (idStation)."""

    __tablename__ = "station"
    id: int | None = Field(default=None, primary_key=True)
    id_stazione: str = Field(max_length=35, unique=True, index=True)
    id_intermediario: str = Field(foreign_key="broker.id_intermediario", max_length=11)
    version: int = Field(default=2)
    password_ref: str | None = Field(default=None, max_length=200)
    publication: str = enum_field(PublicationMode, default=PublicationMode.GPD)
    reporting: str = enum_field(ReportingMode, default=ReportingMode.FDR_REST)
    legacy_rpt: bool = Field(default=False)
    checkout: bool = Field(default=False)
    auth_method: str = enum_field(StationAuth, default=StationAuth.SUBSCRIPTION_KEY)
    auth_secret_ref: str | None = Field(default=None, max_length=200)
    allowed_ips: str | None = Field(default=None, max_length=1000)
    api_key_ref: str | None = Field(default=None, max_length=200)
    enabled: bool = Field(default=True)
    created_at: datetime = created_field()
    updated_at: datetime | None = ts_field()


class Creditor(SQLModel, table=True):
    """A creditor EC (dominio) served by the broker."""

    __tablename__ = "creditor"
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(max_length=11, unique=True, index=True)
    name: str = Field(max_length=140)
    id_stazione: str = Field(foreign_key="station.id_stazione", max_length=35)
    aux_digit: int = Field(default=3)
    segregation_code: str | None = Field(default=None, max_length=2)
    application_code: str | None = Field(default=None, max_length=2)
    iuv_prefix: str = Field(default="", max_length=12)
    cbill: str | None = Field(default=None, max_length=5)
    gln: str | None = Field(default=None, max_length=13)
    logo_path: str | None = Field(default=None, max_length=500)
    sector: str | None = Field(default=None, max_length=140)
    address: str | None = Field(default=None, max_length=200)
    contacts: str | None = Field(default=None, max_length=200)
    reporting_enabled: bool = Field(default=True)
    enabled: bool = Field(default=True)
    created_at: datetime = created_field()
    updated_at: datetime | None = ts_field()


class IbanAccount(SQLModel, table=True):
    """An account of an EC that voci credit (postal accounts flagged)."""

    __tablename__ = "iban_account"
    __table_args__ = (UniqueConstraint("id_dominio", "iban", name="uq_iban_account"),)
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11, index=True)
    iban: str = Field(max_length=34)
    bic: str | None = Field(default=None, max_length=11)
    postal: bool = Field(default=False)
    description: str | None = Field(default=None, max_length=140)
    treasury: bool = Field(default=False)
    enabled: bool = Field(default=True)


class OrganisationalUnit(SQLModel, table=True):
    """An organisational unit of an EC (idUnitaOperativa)."""

    __tablename__ = "organisational_unit"
    __table_args__ = (UniqueConstraint("id_dominio", "code", name="uq_organisational_unit"),)
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11, index=True)
    code: str = Field(max_length=35)
    name: str = Field(max_length=140)
    enabled: bool = Field(default=True)


class DebtType(SQLModel, table=True):
    """A debt type of an EC (idTipoPendenza)."""

    __tablename__ = "debt_type"
    __table_args__ = (UniqueConstraint("id_dominio", "code", name="uq_debt_type"),)
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11, index=True)
    code: str = Field(max_length=35)
    description: str = Field(max_length=140)
    taxonomy: str | None = Field(default=None, max_length=140)
    iuv_prefix: str | None = Field(default=None, max_length=12)
    default_revenue_code: str | None = Field(default=None, max_length=35)
    enabled: bool = Field(default=True)


class RevenueType(SQLModel, table=True):
    """A revenue type of an EC (codEntrata): the IBAN and accounting a voce inherits."""

    __tablename__ = "revenue_type"
    __table_args__ = (UniqueConstraint("id_dominio", "code", name="uq_revenue_type"),)
    id: int | None = Field(default=None, primary_key=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11, index=True)
    code: str = Field(max_length=35)
    description: str = Field(max_length=140)
    iban: str = Field(max_length=34)
    support_iban: str | None = Field(default=None, max_length=34)
    accounting_type: str = Field(default="ALTRO", max_length=10)
    accounting_code: str = Field(max_length=140)
    enabled: bool = Field(default=True)


class Application(SQLModel, table=True):
    """An EC back-office application (idA2A) that uses the API."""

    __tablename__ = "application"
    id: int | None = Field(default=None, primary_key=True)
    id_a2a: str = Field(max_length=35, unique=True, index=True)
    name: str = Field(max_length=140)
    principal: str = Field(max_length=140, unique=True)
    password_hash: str | None = Field(default=None, max_length=300)
    api_key_hash: str | None = Field(default=None, max_length=300)
    own_iuv: bool = Field(default=False)
    all_creditors: bool = Field(default=False)
    notification_url: str | None = Field(default=None, max_length=500)
    notification_auth: str = Field(default="NONE", max_length=16)
    notification_user: str | None = Field(default=None, max_length=140)
    notification_secret_ref: str | None = Field(default=None, max_length=200)
    enabled: bool = Field(default=True)
    created_at: datetime = created_field()
    updated_at: datetime | None = ts_field()


class ApplicationGrant(SQLModel, table=True):
    """An EC (and optionally one debt type) an application may use; debt_type '*' means all types."""

    __tablename__ = "application_grant"
    __table_args__ = (UniqueConstraint("id_a2a", "id_dominio", "debt_type", name="uq_application_grant"),)
    id: int | None = Field(default=None, primary_key=True)
    id_a2a: str = Field(foreign_key="application.id_a2a", max_length=35, index=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11)
    debt_type: str = Field(default="*", max_length=35)


class OperatorRole(StrEnum):
    """What an operator may do."""

    ADMIN = "ADMIN"
    OPERATOR = "OPERATOR"
    READONLY = "READONLY"


class Operator(SQLModel, table=True):
    """A person at an EC or at the broker who configures, monitors and fixes."""

    __tablename__ = "operator"
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=140, unique=True, index=True)
    full_name: str = Field(max_length=140)
    email: str | None = Field(default=None, max_length=254)
    password_hash: str | None = Field(default=None, max_length=300)
    role: str = enum_field(OperatorRole, default=OperatorRole.READONLY)
    all_creditors: bool = Field(default=False)
    failed_logins: int = Field(default=0)
    locked_until: datetime | None = ts_field()
    enabled: bool = Field(default=True)
    created_at: datetime = created_field()
    updated_at: datetime | None = ts_field()


class OperatorGrant(SQLModel, table=True):
    """An EC an operator may see."""

    __tablename__ = "operator_grant"
    __table_args__ = (UniqueConstraint("username", "id_dominio", name="uq_operator_grant"),)
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(foreign_key="operator.username", max_length=140, index=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11)


class RegistryAudit(SQLModel, table=True):
    """Who changed what in the registry, and when."""

    __tablename__ = "registry_audit"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_field()
    actor: str = Field(max_length=140)
    entity: str = Field(max_length=40)
    key: str = Field(max_length=200)
    action: str = Field(max_length=16)
    changes: Any = json_field()


class TreasurySource(SQLModel, table=True):
    """Where an EC's treasury bank drops the account journal (an SFTP directory) and in which format."""

    __tablename__ = "treasury_source"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=80, unique=True, index=True)
    id_dominio: str = Field(foreign_key="creditor.id_dominio", max_length=11, index=True)
    account: str = Field(max_length=34)
    host: str = Field(max_length=255)
    port: int = Field(default=22)
    username: str = Field(max_length=140)
    password_ref: str | None = Field(default=None, max_length=200)
    private_key_ref: str | None = Field(default=None, max_length=200)
    known_hosts: str = Field(max_length=500)
    remote_dir: str = Field(default=".", max_length=500)
    pattern: str = Field(default="*", max_length=200)
    archive_dir: str | None = Field(default=None, max_length=500)
    format: str | None = Field(default=None, max_length=16)
    csv_mapping: Any = json_field()
    enabled: bool = Field(default=True)
