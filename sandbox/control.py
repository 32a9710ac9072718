"""The sandbox's control API (``/sandbox/...``): configuration, reset, faults, exchanges, state summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from typing import Any

from fastapi import APIRouter, Request, Response

from sandbox import faults as faults_module
from sandbox.gpd import position_status
from sandbox.rest import json_response, problem, read_json
from sandbox.state import CreditorConfig, NodeSettings, PspConfig, SandboxState, StationConfig, get_state

router = APIRouter(prefix="/sandbox", tags=["sandbox control"])


def _pick(raw: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in raw and raw[name] is not None:
            return raw[name]
    return default


def _required(raw: dict[str, Any], where: str, *names: str) -> Any:
    value = _pick(raw, *names)
    if value is None or value == "":
        raise ValueError(f"{where}.{names[0]}: required")
    return value


def parse_station(raw: dict[str, Any], where: str) -> StationConfig:
    """A StationConfig from camelCase (or snake_case) JSON."""
    version = int(_pick(raw, "version", default=2))
    if version not in (1, 2):
        raise ValueError(f"{where}.version: 1 or 2")
    headers = _pick(raw, "headers", default={})
    if not isinstance(headers, dict):
        raise ValueError(f"{where}.headers: an object")
    return StationConfig(
        id_station=_required(raw, where, "idStation", "id_station"),
        id_broker=_required(raw, where, "idBroker", "idBrokerPA", "id_broker"),
        password=str(_pick(raw, "password", default="")),
        url=_pick(raw, "url"),
        legacy_url=_pick(raw, "legacyUrl", "legacy_url"),
        version=version,
        headers={str(k): str(v) for k, v in headers.items()},
    )


def parse_creditor(raw: dict[str, Any], where: str, stations: dict[str, StationConfig]) -> CreditorConfig:
    """A CreditorConfig; the broker defaults to its station's."""
    fiscal_code = str(_required(raw, where, "fiscalCode", "fiscal_code", "idPA"))
    if not (fiscal_code.isdigit() and len(fiscal_code) == 11):
        raise ValueError(f"{where}.fiscalCode: 11 digits")
    id_station = _required(raw, where, "idStation", "id_station")
    station = stations.get(id_station)
    broker = _pick(raw, "idBroker", "idBrokerPA", "id_broker", default=station.id_broker if station else None)
    if broker is None:
        raise ValueError(f"{where}.idBroker: required when the station is not configured")
    treasury_format = _pick(raw, "treasuryFormat", "treasury_format", default="opi")
    if treasury_format not in ("opi", "camt053", "cbi"):
        raise ValueError(f"{where}.treasuryFormat: opi, camt053 or cbi")
    return CreditorConfig(
        fiscal_code=fiscal_code,
        name=str(_pick(raw, "name", default=f"Ente {fiscal_code}")),
        id_station=id_station,
        id_broker=broker,
        iban=str(_required(raw, where, "iban")),
        treasury_format=treasury_format,
        treasury_dir=_pick(raw, "treasuryDir", "treasury_dir"),
        gpd_hosted=bool(_pick(raw, "gpdHosted", "gpd_hosted", default=False)),
    )


def parse_psp(raw: dict[str, Any], where: str) -> PspConfig:
    """A PspConfig."""
    psp_id = _required(raw, where, "pspId", "idPsp", "idPSP", "psp_id")
    return PspConfig(
        psp_id=psp_id,
        name=str(_pick(raw, "name", default=psp_id)),
        bic=str(_pick(raw, "bic", default=psp_id)),
        channel=str(_pick(raw, "channel", "idChannel", default=f"{psp_id}_01")),
        broker_id=_pick(raw, "brokerId", "idBrokerPSP", "broker_id"),
        password=_pick(raw, "password"),
    )


_NODE_ALIASES = {
    "verifyTimeout": "verify_timeout",
    "getPaymentTimeout": "get_payment_timeout",
    "sendRtTimeout": "send_rt_timeout",
    "sendRTTimeout": "send_rt_timeout",
    "sendRtAttempts": "send_rt_attempts",
    "sendRtBackoff": "send_rt_backoff",
    "tokenExpirySeconds": "token_expiry_seconds",
    "standInOnTimeout": "standin_on_timeout",
    "standinOnTimeout": "standin_on_timeout",
    "maxExchanges": "max_exchanges",
    "maxPayloadChars": "max_payload_chars",
}


def apply_node_settings(node: NodeSettings, raw: dict[str, Any]) -> None:
    """Update Node settings from camelCase/snake_case keys (unknown keys are an error)."""
    known = {f.name: f for f in fields(NodeSettings)}
    for key, value in raw.items():
        name = _NODE_ALIASES.get(key, key)
        if name not in known:
            raise ValueError(f"node.{key}: unknown setting")
        current = getattr(node, name)
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError(f"node.{key}: a boolean")
        elif isinstance(current, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"node.{key}: a non-negative integer")
        elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"node.{key}: a non-negative number")
        setattr(node, name, type(current)(value))


def apply_config(state: SandboxState, raw: dict[str, Any]) -> None:
    """Upsert stations, creditors, PSPs, subscription keys and Node settings (``replace`` clears first).

    Everything is parsed before anything changes, so a bad body leaves the configuration as it was.
    """
    if not isinstance(raw, dict):
        raise ValueError("the configuration must be an object")
    with state.lock:
        replace = bool(raw.get("replace", False))
        stations = {} if replace else dict(state.stations)
        for i, item in enumerate(raw.get("stations", [])):
            station = parse_station(item, f"stations[{i}]")
            stations[station.id_station] = station
        creditors = {} if replace else dict(state.creditors)
        for i, item in enumerate(raw.get("creditors", [])):
            creditor = parse_creditor(item, f"creditors[{i}]", stations)
            creditors[creditor.fiscal_code] = creditor
        psps = [] if replace else list(state.psps)
        for i, item in enumerate(raw.get("psps", [])):
            psp = parse_psp(item, f"psps[{i}]")
            psps = [p for p in psps if p.psp_id != psp.psp_id] + [psp]
        keys = set() if replace else set(state.subscription_keys)
        raw_keys = _pick(raw, "subscriptionKeys", "subscription_keys", default=[])
        if not isinstance(raw_keys, list) or not all(isinstance(k, str) and k for k in raw_keys):
            raise ValueError("subscriptionKeys: a list of non-empty strings")
        keys.update(raw_keys)
        node = (
            NodeSettings()
            if replace
            else NodeSettings(**{f.name: getattr(state.node, f.name) for f in fields(NodeSettings)})
        )
        node_raw = dict(raw.get("node", {}))
        for key in ("tokenExpirySeconds", "token_expiry_seconds"):
            if key in raw:
                node_raw[key] = raw[key]
        apply_node_settings(node, node_raw)
        state.stations, state.creditors, state.psps = stations, creditors, psps
        state.subscription_keys = keys
        state.node = node


def config_view(state: SandboxState) -> dict[str, Any]:
    """The configuration as JSON (passwords masked)."""
    with state.lock:
        return {
            "stations": [
                {
                    "idStation": s.id_station,
                    "idBroker": s.id_broker,
                    "url": s.url,
                    "legacyUrl": s.legacy_url,
                    "version": s.version,
                    "password": "***",
                    "headers": sorted(s.headers),
                }
                for s in state.stations.values()
            ],
            "creditors": [
                {
                    "fiscalCode": c.fiscal_code,
                    "name": c.name,
                    "idStation": c.id_station,
                    "idBroker": c.id_broker,
                    "iban": c.iban,
                    "treasuryFormat": c.treasury_format,
                    "treasuryDir": c.treasury_dir,
                    "gpdHosted": c.gpd_hosted,
                }
                for c in state.creditors.values()
            ],
            "psps": [
                {
                    "pspId": p.psp_id,
                    "name": p.name,
                    "bic": p.bic,
                    "channel": p.channel,
                    "brokerId": p.broker_id,
                }
                for p in state.psps
            ],
            "subscriptionKeys": len(state.subscription_keys),
            "node": {f.name: getattr(state.node, f.name) for f in fields(NodeSettings)},
        }


def _flow_count(reporting: Any) -> int:
    """Reporting flows held by sandbox-reporting's state (every revision, published or pending)."""
    if reporting is None:
        return 0
    flows = getattr(reporting, "flows", None)
    if flows is not None and hasattr(flows, "__len__"):
        return len(flows)
    revisions = getattr(reporting, "revisions", None) or {}
    pending = getattr(reporting, "pending", None) or []
    return sum(len(v) for v in revisions.values()) + len(pending)


def state_summary(state: SandboxState) -> dict[str, Any]:
    """Counts of what the sandbox holds."""
    with state.lock:
        statuses = Counter(position_status(p) for p in state.positions.values())
        deliveries = Counter(d.status for r in state.receipts.values() for d in r.deliveries.values())
        reporting = state.reporting
        summary_fn = getattr(reporting, "summary", None)
        return {
            "seed": state.seed,
            "positions": {"total": len(state.positions), "byStatus": dict(statuses)},
            "receipts": {
                "total": len(state.receipts),
                "standIn": sum(1 for r in state.receipts.values() if r.standin),
                "deliveries": dict(deliveries),
            },
            "transfers": {
                "total": len(state.transfers),
                "settled": sum(1 for t in state.transfers if t.settled),
            },
            "tokens": {"open": sum(1 for t in state.tokens.values() if not t.closed)},
            "exchanges": len(state.exchanges),
            "flows": _flow_count(reporting),
            "reporting": summary_fn() if callable(summary_fn) else None,
            "faults": state.faults.as_dict(),
            "config": {
                "stations": len(state.stations),
                "creditors": len(state.creditors),
                "psps": len(state.psps),
            },
        }


@router.post("/reset", operation_id="sandboxReset")
async def reset(request: Request) -> Response:
    """Forget everything: configuration, data, faults; reseed."""
    get_state(request).reset()
    return json_response({"reset": True})


@router.put("/config", operation_id="sandboxPutConfig")
async def put_config(request: Request) -> Response:
    """Upsert configuration (see ``apply_config``); answers the resulting configuration."""
    state = get_state(request)
    try:
        apply_config(state, await read_json(request))
    except (ValueError, TypeError) as exc:
        raise problem(400, "Bad Request", str(exc)) from exc
    return json_response(config_view(state))


@router.get("/config", operation_id="sandboxGetConfig")
async def get_config(request: Request) -> Response:
    """The current configuration."""
    return json_response(config_view(get_state(request)))


@router.put("/faults", operation_id="sandboxPutFaults")
async def put_faults(request: Request) -> Response:
    """Replace the fault rules: ``{seed, rules: [{path, operation, method, latencyMs, …}]}``."""
    state = get_state(request)
    try:
        rules, seed = faults_module.rules_from_payload(await read_json(request))
    except ValueError as exc:
        raise problem(400, "Bad Request", str(exc)) from exc
    state.faults.set_rules(rules=rules, seed=seed)
    return json_response(state.faults.as_dict())


@router.get("/faults", operation_id="sandboxGetFaults")
async def get_faults(request: Request) -> Response:
    """The fault rules and how many requests each has hit."""
    return json_response(get_state(request).faults.as_dict())


@router.delete("/faults", operation_id="sandboxDeleteFaults")
async def delete_faults(request: Request) -> Response:
    """Remove every fault rule."""
    get_state(request).faults.clear()
    return json_response({"rules": []})


@router.get("/exchanges", operation_id="sandboxExchanges")
async def exchanges(request: Request) -> Response:
    """What the sandbox received and sent; filters: ``endpoint`` (prefix), ``operation``, ``direction``."""
    state = get_state(request)
    params = request.query_params
    endpoint, operation, direction = params.get("endpoint"), params.get("operation"), params.get("direction")
    try:
        limit = int(params.get("limit", "1000"))
    except ValueError as exc:
        raise problem(400, "Bad Request", "limit: an integer") from exc
    with state.lock:
        items = [
            e
            for e in state.exchanges
            if (not endpoint or e.endpoint.startswith(endpoint))
            and (not operation or e.operation == operation)
            and (not direction or e.direction == direction)
        ]
    items = items[-limit:] if limit > 0 else items
    return json_response(
        [
            {
                "at": e.at.isoformat(),
                "direction": e.direction,
                "endpoint": e.endpoint,
                "operation": e.operation,
                "status": e.status,
                "durationMs": e.duration_ms,
                "request": e.request,
                "response": e.response,
            }
            for e in items
        ]
    )


@router.delete("/exchanges", operation_id="sandboxClearExchanges")
async def clear_exchanges(request: Request) -> Response:
    """Forget the exchanges recorded so far."""
    state = get_state(request)
    with state.lock:
        state.exchanges.clear()
    return json_response({"exchanges": 0})


@router.get("/state", operation_id="sandboxState")
async def state_view(request: Request) -> Response:
    """Counts of positions (by status), receipts, transfers, tokens, exchanges and flows."""
    return json_response(state_summary(get_state(request)))
