"""The last run of each stage, read from the Prefect server when one is configured (PREFECT_API_URL)."""

from __future__ import annotations

import logging
import os
import threading
import time

from rules.console import STAGES, FlowRunInfo

log = logging.getLogger(__name__)
_CACHE_SECONDS = 15.0
_lock = threading.Lock()
_cache: dict[str, tuple[float, list[FlowRunInfo]]] = {}


class PrefectUnavailable(RuntimeError):
    """The Prefect server is configured but did not answer."""


def prefect_api_url() -> str | None:
    """The Prefect API of this installation, if one is configured (the console never starts one)."""
    return os.environ.get("PREFECT_API_URL") or None


def prefect_ui_url() -> str | None:
    """Where the Prefect UI is: PREFECT_UI_URL, or the API URL without its /api suffix."""
    explicit = os.environ.get("PREFECT_UI_URL")
    if explicit:
        return explicit.rstrip("/")
    api = prefect_api_url()
    return api.rstrip("/").removesuffix("/api") if api else None


def last_runs() -> list[FlowRunInfo] | None:
    """The newest runs that started, newest first, of the stages' flows (None without a Prefect server).

    Cached for a few seconds: a dashboard refresh should not cost the server two queries each time.
    """
    api = prefect_api_url()
    if api is None:
        return None
    with _lock:
        cached = _cache.get(api)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterStartTime,
        )
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            flows = client.read_flows(
                flow_filter=FlowFilter(name=FlowFilterName(any_=list(STAGES))), limit=50
            )
            names = {f.id: f.name for f in flows}
            runs = (
                client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=list(STAGES))),
                    flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
                    sort=FlowRunSort.START_TIME_DESC,
                    limit=200,
                )
                if names
                else []
            )
    except Exception as exc:  # the dashboard must answer even when the orchestrator does not
        log.warning("Prefect server at %s not reachable: %s", api, exc)
        raise PrefectUnavailable(str(exc)) from exc
    out = [
        FlowRunInfo(
            flow_name=names.get(r.flow_id, "?"),
            run_id=str(r.id),
            run_name=r.name,
            state=r.state.type.value if r.state is not None else "UNKNOWN",
            start_time=r.start_time,
        )
        for r in runs
    ]
    with _lock:
        _cache[api] = (time.monotonic() + _CACHE_SECONDS, out)
    return out


def clear_cache() -> None:
    """Forget cached runs (tests, and after the console itself started a flow)."""
    with _lock:
        _cache.clear()
