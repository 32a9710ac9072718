"""Small builders of treasury files for tests: OPI Giornale di Cassa pages of any size, camt.053, CBI RH."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import IO
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class OpiRow:
    """What one generated OPI movement carries."""

    importo: Decimal
    causale: str
    tipo_movimento: str = "ENTRATA"
    tipo_documento: str = "SOSPESO ENTRATA"
    tipo_operazione: str = "ESEGUITO"
    data: date = date(2024, 7, 26)
    end_to_end_id: str | None = None
    cliente: str = "PSP DEMO SPA SERVIZIO PAGOPA"


def opi_flow_row(index: int) -> OpiRow:
    """A deterministic pagoPA sospeso di entrata; every seventh is a debit, every eleventh a storno."""
    day = date(2024, 1, 1) + timedelta(days=index % 300)
    flow_id = f"{day.isoformat()}PSP{index % 97:05d}XXX-S{index:010d}"
    debit = index % 7 == 0
    return OpiRow(
        importo=Decimal(index % 100_000) / 100 + Decimal("0.01"),
        causale=f"/PUR/LGPE-RIVERSAMENTO/URI/{flow_id}",
        tipo_movimento="USCITA" if debit else "ENTRATA",
        tipo_documento="SOSPESO USCITA" if debit else "SOSPESO ENTRATA",
        tipo_operazione="STORNATO" if index % 11 == 0 else "ESEGUITO",
        data=day,
        end_to_end_id=f"E2E-{index:012d}",
    )


def _movement_xml(number: int, row: OpiRow) -> str:
    e2e = f"<end_to_end_id>{escape(row.end_to_end_id)}</end_to_end_id>" if row.end_to_end_id else ""
    return (
        "<movimento_conto_evidenza>"
        f"<identificativo_flusso>GDC{number:012d}</identificativo_flusso>"
        f"<numero_movimento>{number}</numero_movimento>"
        f"<tipo_movimento>{row.tipo_movimento}</tipo_movimento>"
        f"<tipo_documento>{row.tipo_documento}</tipo_documento>"
        f"<tipo_operazione>{row.tipo_operazione}</tipo_operazione>"
        f"<numero_documento>{number}</numero_documento>"
        "<progressivo_documento>0</progressivo_documento>"
        f"<importo>{row.importo:.2f}</importo>"
        f"<numero_bolletta_quietanza>{number}</numero_bolletta_quietanza>"
        f"<data_movimento>{row.data.isoformat()}</data_movimento>"
        f"<data_movimento_siope>{row.data.isoformat()}</data_movimento_siope>"
        f"<data_valuta_ente>{row.data.isoformat()}</data_valuta_ente>"
        "<tipo_esecuzione>SEPA CREDIT TRANSFER</tipo_esecuzione>"
        f"<codice_riferimento_operazione>TRN{number:025d}IT</codice_riferimento_operazione>"
        f"{e2e}"
        "<assoggettamento_bollo>ESENTE BOLLO</assoggettamento_bollo>"
        f"<cliente><anagrafica_cliente>{escape(row.cliente)}</anagrafica_cliente></cliente>"
        f"<causale>{escape(row.causale)}</causale>"
        "</movimento_conto_evidenza>\n"
    )


def write_opi_giornale(
    out: IO[bytes], rows: Iterable[OpiRow], *, conto: str = "0000001", esercizio: int = 2024
) -> int:
    """Write one OPI 1.8 page with the given rows (an iterable of OpiRow) to ``out``; return how many."""
    out.write(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<flusso_giornale_di_cassa>'
        b"<testata_messaggio><codice_ABI_BT>05428</codice_ABI_BT>"
        b"<data_ora_creazione_flusso>2024-07-27T02:30:00</data_ora_creazione_flusso>"
        b"<codice_ente>CX9999</codice_ente><descrizione_ente>COMUNE DI PROVA</descrizione_ente>"
        b"<codice_fiscale_ente>01234567890</codice_fiscale_ente></testata_messaggio>"
        b"<identificativo_flusso_BT>GDC-20240727COMPROVA0001#001#001</identificativo_flusso_BT>"
        b"<pagina>1</pagina><pagine_totali>1</pagine_totali>"
        + f"<esercizio>{esercizio}</esercizio>".encode()
        + b"<data_riferimento_GdC>2024-07-26</data_riferimento_GdC>"
        + f"<informazioni_conto_evidenza><conto_evidenza>{conto}</conto_evidenza>\n".encode()
    )
    count = 0
    batch: list[str] = []
    for row in rows:
        count += 1
        batch.append(_movement_xml(count, row))
        if len(batch) == 1000:
            out.write("".join(batch).encode("utf-8"))
            batch.clear()
    out.write("".join(batch).encode("utf-8"))
    out.write(b"</informazioni_conto_evidenza></flusso_giornale_di_cassa>\n")
    return count


@dataclass(frozen=True)
class CamtEntry:
    """What one generated camt.053 entry carries."""

    amount: str
    indicator: str = "CRDT"
    ustrd: tuple[str, ...] = ()
    reversal: bool | None = None
    booking: str = "<Dt>2024-07-26</Dt>"
    end_to_end_ids: tuple[str, ...] = ("NOTPROVIDED",)
    debtor: str = "PSP DEMO SPA"
    reference: str = "R1"


def camt053(
    entries: list[CamtEntry], *, version: str = "02", iban: str = "IT60X0542811101000000123456"
) -> bytes:
    """A camt.053 document: one TxDtls per end-to-end id of an entry, its Ustrd lines in the first."""
    namespace = f"urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}"
    parts = [
        f'<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{namespace}">'
        "<BkToCstmrStmt><GrpHdr><MsgId>M</MsgId><CreDtTm>2024-07-27T06:00:00</CreDtTm></GrpHdr>"
        f"<Stmt><Id>S</Id><CreDtTm>2024-07-27T06:00:00</CreDtTm><Acct><Id><IBAN>{iban}</IBAN></Id></Acct>"
    ]
    for entry in entries:
        reversal = "" if entry.reversal is None else f"<RvslInd>{str(entry.reversal).lower()}</RvslInd>"
        details = []
        for index, e2e in enumerate(entry.end_to_end_ids):
            ustrd = "".join(f"<Ustrd>{escape(line)}</Ustrd>" for line in entry.ustrd) if index == 0 else ""
            party = (
                f"<Pty><Nm>{escape(entry.debtor)}</Nm></Pty>"
                if version == "08"
                else f"<Nm>{escape(entry.debtor)}</Nm>"
            )
            details.append(
                f"<TxDtls><Refs><EndToEndId>{escape(e2e)}</EndToEndId></Refs>"
                f"<RltdPties><Dbtr>{party}</Dbtr></RltdPties>"
                + (f"<RmtInf>{ustrd}</RmtInf>" if ustrd else "")
                + "</TxDtls>"
            )
        parts.append(
            f'<Ntry><NtryRef>{escape(entry.reference)}</NtryRef><Amt Ccy="EUR">{entry.amount}</Amt>'
            f"<CdtDbtInd>{entry.indicator}</CdtDbtInd>{reversal}<Sts>BOOK</Sts>"
            f"<BookgDt>{entry.booking}</BookgDt><ValDt><Dt>2024-07-26</Dt></ValDt>"
            f"<NtryDtls>{''.join(details)}</NtryDtls></Ntry>"
        )
    parts.append("</Stmt></BkToCstmrStmt></Document>")
    return "".join(parts).encode("utf-8")


def cbi_record(body: str) -> str:
    """One 120-character CBI record: the blank filler, then ``body``, padded."""
    return (" " + body).ljust(120)[:120]


def cbi_rh(records: list[str]) -> bytes:
    """A CBI RH file from record bodies (each without the leading filler), with header and trailer."""
    lines = [cbi_record("RH05428C1234270724RH-TEST"), *(cbi_record(body) for body in records)]
    lines.append(cbi_record("EF05428C1234270724RH-TEST"))
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def cbi_movement(
    *,
    number: int,
    sign: str,
    amount: str,
    remittance: list[str],
    ordering_party: str = "PSP DEMO",
    e2e: str = "",
) -> list[str]:
    """The 62 record of a movement and its 63 records (YYY, ID1, one RI per remittance piece)."""
    sequence = f"0000001{number:03d}"
    records = [
        f"62{sequence}260724260724{sign}{amount.rjust(15, '0')}48".ljust(60) + f"BT{number:014d}",
        f"63{sequence}YYY25072024".ljust(39) + ordering_party.ljust(40) + "IT",
        f"63{sequence}ID1" + f"TRN{number:027d}IT".ljust(35) + e2e.ljust(35),
    ]
    for index, piece in enumerate(remittance, start=1):
        records.append(f"63{sequence}RI{index}" + piece)
    return records
