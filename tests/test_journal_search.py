"""Searching the journal by payment, flow and file keys, from the store and from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from connectors.journal import EventJournal
from models.journal import Outcome, Role
from models.settings import PayloadPolicy
from rules.positions import italian_today
from store.journal import JournalQuery, search_events
from tests.conftest import Database


def test_search_by_iuv_nav_flow_and_file(db: Database) -> None:
    journal = EventJournal(session_factory=db.session, policy=PayloadPolicy.ALWAYS)
    journal.record(component="station", operation="paGetPaymentV2", role=Role.SERVER, outcome=Outcome.OK,
                   keys={"id_dominio": "01234567897", "nav": "301000000000000144"}, request="<x/>")
    journal.record(component="station", operation="paSendRTV2", role=Role.SERVER, outcome=Outcome.KO,
                   keys={"id_dominio": "01234567897", "iuv": "01000000000000144", "receipt_id": "R1"},
                   fault_code="PAA_RECEIPT_DUPLICATA")
    journal.record(component="fdr", operation="getFlow", role=Role.CLIENT, outcome=Outcome.OK,
                   keys={"id_flusso": "2026-11-26BCITITMM-S1"})
    journal.record(component="sftp", operation="download", role=Role.CLIENT, outcome=Outcome.FAIL,
                   keys={"file_name": "GDC_1.xml"}, error="connection reset")
    with db.session() as s:
        by_iuv = search_events(s, query=JournalQuery(iuv="01000000000000144"))
        assert [e.operation for e in by_iuv] == ["paGetPaymentV2", "paSendRTV2"]
        by_nav = search_events(s, query=JournalQuery(nav="301000000000000144"))
        assert [e.operation for e in by_nav] == ["paGetPaymentV2", "paSendRTV2"]
        assert [e.operation for e in search_events(s, query=JournalQuery(id_flusso="2026-11-26BCITITMM-S1"))] == \
            ["getFlow"]
        assert [e.error for e in search_events(s, query=JournalQuery(file_name="GDC_1.xml"))] == ["connection reset"]
        assert len(search_events(s, query=JournalQuery(day=italian_today()))) == 4
        assert search_events(s, query=JournalQuery(outcome="KO"))[0].fault_code == "PAA_RECEIPT_DUPLICATA"
    out = subprocess.run([sys.executable, "-m", "cli", "journal", "--avviso", "301000000000000144"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "PAGOFLOW_DATABASE_URL": db.url, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "paGetPaymentV2" in out.stdout and "PAA_RECEIPT_DUPLICATA" in out.stdout and "2 event(s)" in out.stdout
