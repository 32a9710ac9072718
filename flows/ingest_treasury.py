"""The ingest-treasury flow: fetch new account journals over SFTP, store their movements, archive them."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from models.treasury import TreasuryFileState
from tasks.claims import leased, treasury_lease
from tasks.treasury import (
    FileOutcome,
    archive_treasury_files,
    fetch_treasury_file,
    list_treasury_files,
    list_treasury_sources,
    publish_treasury_report,
    store_treasury_file,
)


class TreasuryIngestError(RuntimeError):
    """Some sources or files could not be fetched or stored; the others were."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__(
            f"{len(failures)} failure(s): " + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )


@flow(name="ingest-treasury", log_prints=False)
def ingest_treasury(source: str | None = None, archive: bool = True) -> dict[str, Any]:
    """Ingest every new file of one treasury source (or all enabled ones); a re-run adds nothing.

    A file is fetched and hashed, then parsed and stored (or skipped if its bytes were seen, or quarantined);
    a stored credit already posted through the API Ragioneria is joined to that riconciliazione (``linked``),
    never counted twice. Stored files are moved to the source's archive directory when ``archive`` is true.
    A failing source or file does not stop the others; the run fails at the end, after the report, if
    anything failed.
    """
    logger = get_run_logger()
    outcomes: list[FileOutcome] = []
    failures: dict[str, str] = {}
    archived: dict[str, list[str]] = {}
    sources = list_treasury_sources(source)
    # a source another run is fetching (another worker, the daily cycle) is left to it: a lease per source
    with leased([treasury_lease(info.name) for info in sources]) as held:
        busy = [info.name for info in sources if treasury_lease(info.name) not in held]
        for info in (s for s in sources if s.name not in busy):
            try:
                files = list_treasury_files(info.name)
            except Exception as exc:  # noqa: BLE001 - recorded, reported, and the run fails at the end
                failures[info.name] = f"{type(exc).__name__}: {exc}"
                continue
            done: list[str] = []
            for remote in files:
                try:
                    fetched = fetch_treasury_file(info.name, remote)
                    outcome = store_treasury_file(fetched)
                except Exception as exc:  # noqa: BLE001 - one file must not stop the others
                    failures[f"{info.name}/{remote.name}"] = f"{type(exc).__name__}: {exc}"
                    continue
                outcomes.append(outcome)
                if outcome.archivable:
                    done.append(remote.name)
            if archive and info.archive and done:
                try:
                    archived[info.name] = archive_treasury_files(info.name, done)
                except Exception as exc:  # noqa: BLE001 - stored already; the next run archives them
                    failures[f"{info.name} (archive)"] = f"{type(exc).__name__}: {exc}"
    publish_treasury_report(outcomes, failures)
    summary = {
        "files": [o.model_dump(mode="json") for o in outcomes],
        "processed": sum(o.state == TreasuryFileState.PROCESSED for o in outcomes),
        "quarantined": sum(o.state == TreasuryFileState.QUARANTINED for o in outcomes),
        "skipped": sum(o.previous is not None for o in outcomes),
        "movements": sum(o.movements for o in outcomes),
        "duplicates": sum(o.duplicates for o in outcomes),
        "linked": sum(o.linked for o in outcomes),
        "conflicts": sum(len(o.conflicts) for o in outcomes),
        "archived": archived,
        "busy": busy,
        "failures": failures,
    }
    logger.info(
        "treasury ingestion: %s processed, %s quarantined, %s skipped, %s new movements, %s failures",
        summary["processed"],
        summary["quarantined"],
        summary["skipped"],
        summary["movements"],
        len(failures),
    )
    if failures:
        raise TreasuryIngestError(failures)
    return summary
