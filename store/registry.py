"""Applying a validated registry to the database: idempotent upserts by business key, audited."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, SQLModel, select

from models.registry import (
    Application,
    ApplicationGrant,
    Broker,
    Creditor,
    DebtType,
    IbanAccount,
    OrganisationalUnit,
    Operator,
    OperatorGrant,
    RegistryAudit,
    RevenueType,
    Station,
    TreasurySource,
)
from models.types import utcnow
from rules.identifiers import is_postal_iban
from rules.registry import RegistrySpec


@dataclass
class ApplyReport:
    """What an apply did, per entity: created, updated, unchanged, removed."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, entity: str, action: str) -> None:
        """Count one action on one entity."""
        self.counts.setdefault(entity, Counter())[action] += 1

    @property
    def changed(self) -> bool:
        """Whether anything was created, updated or removed."""
        return any(c["created"] or c["updated"] or c["removed"] for c in self.counts.values())

    def summary(self) -> str:
        """One line per entity, e.g. 'creditor: 3 created, 0 updated, 0 unchanged'."""
        lines = []
        for entity, c in self.counts.items():
            line = f"{entity}: {c['created']} created, {c['updated']} updated, {c['unchanged']} unchanged"
            if c["removed"]:
                line += f", {c['removed']} removed"
            lines.append(line)
        return "\n".join(lines)


class _Applier:
    def __init__(self, session: Session, actor: str) -> None:
        self.session = session
        self.actor = actor
        self.report = ApplyReport()

    def sync(self, model: type[SQLModel], key: dict[str, Any], values: dict[str, Any]) -> None:
        """Insert or update one row found by its business key."""
        entity = model.__tablename__  # type: ignore[attr-defined]
        stmt = select(model)
        for name, value in key.items():
            stmt = stmt.where(getattr(model, name) == value)
        row = self.session.exec(stmt).first()
        label = "/".join(str(v) for v in key.values())
        if row is None:
            self.session.add(model(**key, **values))
            self.report.add(entity, "created")
            self._audit(entity, label, "create", {k: _shown(k, v) for k, v in values.items()})
            return
        changes = {k: [_shown(k, getattr(row, k)), _shown(k, v)] for k, v in values.items() if getattr(row, k) != v}
        if not changes:
            self.report.add(entity, "unchanged")
            return
        for name in changes:
            setattr(row, name, values[name])
        if hasattr(row, "updated_at"):
            row.updated_at = utcnow()  # type: ignore[attr-defined]
        self.session.add(row)
        self.report.add(entity, "updated")
        self._audit(entity, label, "update", changes)

    def sync_set(self, model: type[SQLModel], owner: dict[str, Any], wanted: list[dict[str, Any]]) -> None:
        """Make the rows of one owner exactly ``wanted`` (grants: what the file no longer lists is revoked)."""
        entity = model.__tablename__  # type: ignore[attr-defined]
        stmt = select(model)
        for name, value in owner.items():
            stmt = stmt.where(getattr(model, name) == value)
        existing = self.session.exec(stmt).all()
        fields = list(wanted[0]) if wanted else []
        present = {tuple(getattr(r, f) for f in fields): r for r in existing} if fields else {}
        wanted_keys = {tuple(w[f] for f in fields) for w in wanted}
        for w in wanted:
            if tuple(w[f] for f in fields) in present:
                self.report.add(entity, "unchanged")
            else:
                self.session.add(model(**owner, **w))
                self.report.add(entity, "created")
                self._audit(entity, "/".join(map(str, [*owner.values(), *w.values()])), "create", None)
        for row in existing:
            if not fields or tuple(getattr(row, f) for f in fields) not in wanted_keys:
                self.session.delete(row)
                self.report.add(entity, "removed")
                self._audit(entity, "/".join(map(str, owner.values())), "delete", None)

    def _audit(self, entity: str, key: str, action: str, changes: dict[str, Any] | None) -> None:
        self.session.add(RegistryAudit(actor=self.actor, entity=entity, key=key[:200], action=action,
                                       changes=changes))


def _shown(name: str, value: Any) -> Any:
    # Hashes are not secrets, but they do not belong in an audit trail anyone can read.
    return "(hash)" if name.endswith("_hash") and value else value


def apply_registry(session: Session, *, spec: RegistrySpec, actor: str = "config-apply") -> ApplyReport:
    """Upsert the whole registry in the caller's transaction; a second apply of the same file changes nothing."""
    a = _Applier(session, actor)
    b = spec.broker
    a.sync(Broker, {"id_intermediario": b.id_intermediario}, {"name": b.name})
    session.flush()
    for s in spec.stations:
        a.sync(Station, {"id_stazione": s.id_stazione}, {
            "id_intermediario": b.id_intermediario, "version": s.version, "password_ref": s.password_ref,
            "api_key_ref": s.api_key_ref, "publication": s.publication, "reporting": s.reporting,
            "legacy_rpt": s.legacy_rpt, "checkout": s.checkout, "auth_method": s.auth.method,
            "auth_secret_ref": s.auth.secret_ref, "allowed_ips": ",".join(s.auth.allowed_ips) or None,
            "enabled": s.enabled,
        })
    session.flush()
    for c in spec.creditors:
        a.sync(Creditor, {"id_dominio": c.id_dominio}, {
            "name": c.name, "id_stazione": c.station, "aux_digit": c.aux_digit,
            "segregation_code": c.segregation_code, "application_code": c.application_code,
            "iuv_prefix": c.iuv_prefix, "cbill": c.cbill, "gln": c.gln, "logo_path": c.logo, "sector": c.sector,
            "address": c.address, "contacts": c.contacts, "reporting_enabled": c.reporting_enabled,
            "enabled": c.enabled,
        })
        session.flush()
        key = {"id_dominio": c.id_dominio}
        for acc in c.ibans:
            postal = is_postal_iban(acc.iban) if acc.postal is None else acc.postal
            a.sync(IbanAccount, {**key, "iban": acc.iban}, {
                "bic": acc.bic, "postal": postal, "treasury": acc.treasury, "description": acc.description,
                "enabled": acc.enabled})
        for u in c.units:
            a.sync(OrganisationalUnit, {**key, "code": u.code}, {"name": u.name})
        for r in c.revenue_types:
            a.sync(RevenueType, {**key, "code": r.code}, {
                "description": r.description, "iban": r.iban, "support_iban": r.support_iban,
                "accounting_type": r.accounting_type, "accounting_code": r.accounting_code})
        for d in c.debt_types:
            a.sync(DebtType, {**key, "code": d.code}, {
                "description": d.description, "taxonomy": d.taxonomy, "iuv_prefix": d.iuv_prefix,
                "default_revenue_code": d.default_revenue_code})
    session.flush()
    for app in spec.applications:
        n = app.notification
        a.sync(Application, {"id_a2a": app.id_a2a}, {
            "name": app.name, "principal": app.principal, "password_hash": app.password_hash,
            "api_key_hash": app.api_key_hash, "own_iuv": app.own_iuv, "all_creditors": app.all_creditors,
            "notification_url": n.url if n else None, "notification_auth": n.auth if n else "NONE",
            "notification_user": n.user if n else None, "notification_secret_ref": n.secret_ref if n else None,
            "enabled": app.enabled,
        })
        session.flush()
        grants = [{"id_dominio": g.id_dominio, "debt_type": t} for g in app.grants for t in g.debt_types]
        a.sync_set(ApplicationGrant, {"id_a2a": app.id_a2a}, grants)
    for op in spec.operators:
        a.sync(Operator, {"username": op.username}, {
            "full_name": op.full_name, "email": op.email, "password_hash": op.password_hash, "role": op.role,
            "all_creditors": op.all_creditors, "enabled": op.enabled})
        session.flush()
        a.sync_set(OperatorGrant, {"username": op.username}, [{"id_dominio": c} for c in op.creditors])
    for src in spec.treasury_sources:
        a.sync(TreasurySource, {"name": src.name}, {
            "id_dominio": src.id_dominio, "account": src.account, "host": src.host, "port": src.port,
            "username": src.username, "password_ref": src.password_ref, "private_key_ref": src.private_key_ref,
            "known_hosts": src.known_hosts, "remote_dir": src.remote_dir, "pattern": src.pattern,
            "archive_dir": src.archive_dir, "format": src.format, "csv_mapping": src.csv_mapping,
            "enabled": src.enabled})
    session.flush()
    return a.report


def registry_snapshot(session: Session) -> dict[str, list[dict[str, Any]]]:
    """The registry as stored, entity by entity, without credentials (for `pagoflow config show`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in (Broker, Station, Creditor, IbanAccount, OrganisationalUnit, DebtType, RevenueType, Application,
                  ApplicationGrant, Operator, OperatorGrant, TreasurySource):
        rows = session.exec(select(model)).all()
        out[model.__tablename__] = [  # type: ignore[attr-defined]
            {k: ("(set)" if v and k.endswith("_hash") else v) for k, v in r.model_dump().items()
             if k not in {"id", "created_at", "updated_at", "failed_logins", "locked_until"}}
            for r in rows
        ]
    return out


def upsert_entry(session: Session, *, model: type[SQLModel], key: dict[str, Any], values: dict[str, Any],
                 actor: str) -> str:
    """Create or update one registry row found by its business key, audited as `config apply` audits.

    For edits of single entries (the operator console); returns 'created', 'updated' or 'unchanged'.
    """
    applier = _Applier(session, actor)
    applier.sync(model, key, values)
    session.flush()
    counts = applier.report.counts[model.__tablename__]  # type: ignore[attr-defined]
    return next(action for action in ("created", "updated", "unchanged") if counts[action])


def replace_grants(session: Session, *, model: type[SQLModel], owner: dict[str, Any],
                   wanted: list[dict[str, Any]], actor: str) -> bool:
    """Make an owner's grants exactly ``wanted`` (others revoked), audited; True if anything changed."""
    applier = _Applier(session, actor)
    applier.sync_set(model, owner, wanted)
    session.flush()
    return applier.report.changed
