"""Hostile input on every parser and endpoint: a clear error, in bounded time and memory, never a crash.

Hypothesis drives each parser with hostile values (control characters, over-long strings, amounts with three
decimals, signs, NaN, exponents or thousands of digits, wrong encodings) put into otherwise valid documents,
and with documents cut and spliced at random; crafted cases add what a fuzzer will not find by itself (billion
laughs, external entities, DTDs hidden after 64 KiB or in UTF-16, 100,000 levels of nesting, 50 MB bodies).
HTTP surfaces (API Pendenze, API Pagamento, Ragioneria, the paForNode station, paaInviaRT) are called over
real HTTP on a live server. The number of cases tried per parser is printed in the terminal summary.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.pagopa.errors import PagopaError
from connectors.pagopa.fdr import FdrClient
from connectors.treasury.formats import HEAD_BYTES, detect_format, read_movements
from connectors.treasury.movement import CsvMapping, Movement, TreasuryFormat, TreasuryFormatError
from models.settings import get_settings
from rules.receipts import receipt_from_xml
from rules.remittance import parse_remittance
from rules.reporting import FlowFormatError, read_flow
from rules.rpt import RptError, parse_rt
from rules.station import FAULT_STRINGS
from rules.tracciato import AnnulRow, InsertRow, RowError, TracciatoError, read_tracciato
from rules.xmlsafe import MalformedXMLError, UnsafeXMLError, iterparse_xml, parse_xml
from tests.conftest import Database
from tests.factories import iban_pendenza, load_example_registry
from tests.platform_env import web_on
from tests.soap_messages import (
    INVIA_RT,
    OPERATIONS,
    RT_TEMPLATE,
    RT_VALUES,
    STATION_VALUES,
    station_envelope,
)
from web import soap
from web.station import RESPONSES

# --- the cases tried, printed at the end of the session -------------------------------------------------

CASES: Counter[str] = Counter()


class _CasesSummary:
    """A plugin registered by this module: prints how many hostile cases each parser was given."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not CASES:
            return
        terminalreporter.section("hostile input: cases tried per parser")
        for parser, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{parser:<34} {count:>6}")
        terminalreporter.write_line(f"{'total':<34} {sum(CASES.values()):>6}")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("hostile-input-cases"):
        manager.register(_CasesSummary(), "hostile-input-cases")


@contextmanager
def case(parser: str, *, seconds: float = 2.0) -> Iterator[None]:
    """Count one case of ``parser`` and hold it to a time bound."""
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    CASES[parser] += 1
    if elapsed >= seconds:
        pytest.fail(f"{parser}: one case took {elapsed:.2f} s (bound {seconds} s)", pytrace=False)


@contextmanager
def bounded_memory(limit_mib: float) -> Iterator[None]:
    """Fail when the Python heap (every thread, the live server's too) grows by more than ``limit_mib``."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit_mib * 1024 * 1024, f"peak {peak / 1024 / 1024:.1f} MiB"


# Examples per test are few (the module takes about 40 s of CPU); deadlines sit above the bounds of ``case()``
# so that a loaded CI machine does not make them flaky.
SLOW_OK = [HealthCheck.too_slow]
FAST = settings(max_examples=40, deadline=timedelta(seconds=2.5), suppress_health_check=SLOW_OK)
HTTP = settings(max_examples=25, deadline=timedelta(seconds=4), suppress_health_check=SLOW_OK)

# --- hostile values ---------------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x1b[31mrosso\x1b[0m",
    "\r\n",
    "riga\r\nX-Injected: 1",
    "\u202egnp.exe",
    "\ufeff",
    "\u2028\u2029",
    "<script>alert(1)</script>",
    "]]>",
    "&amp;&lt;",
    "' OR '1'='1' --",
    "%s%n%x{0}{!r}",
    "../../../etc/passwd",
    "١٢٣",
    "😀" * 20,
    "A" * 5000,
    "è" * 300,
    "\t\v\f",
    "&#0;",
    "&xxe;",
    "${jndi:x}",
]
HOSTILE_AMOUNTS = [
    "1.001",
    "1,000",
    "1.000",
    "0.001",
    "-5",
    "-0.01",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1e3",
    "1E-2",
    "1e400",
    "9" * 40,
    "9" * 5000,
    "0x10",
    "1_000",
    "١٢",
    "12.",
    ".5",
    "",
    "+5",
    "1.234,567",
    "1,2,3",
    "1..2",
    "00000000000000000001.00",
    "0",
    "0.00",
    "12,345.678",
    "1 000,00",
    " 7,10 ",
    "25.00",
    "1e-400",
    "-0",
]


def texts(max_size: int = 60) -> st.SearchStrategy[str]:
    """Hostile or arbitrary text (any code point but surrogates)."""
    return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=max_size))


def amounts() -> st.SearchStrategy[str]:
    """Amounts as text: hostile spellings, arbitrary decimals (NaN and infinities included), integers."""
    return st.one_of(
        st.sampled_from(HOSTILE_AMOUNTS),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.floats().map(repr),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.decimals(min_value=0, max_value=10**6, places=2).map(str),
    )


def spliced(data: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """``data`` with one slice replaced by hostile bytes (cut, truncated, control bytes, latin-1, UTF-16)."""
    start = draw(st.integers(min_value=0, max_value=len(data)))
    end = draw(st.integers(min_value=start, max_value=min(len(data), start + 64)))
    junk = draw(
        st.one_of(
            st.binary(max_size=16),
            st.sampled_from(
                [b"", b"\x00", b"\xff\xfe", b"\xe8", b"<", b"&", b"]]>", b"<!DOCTYPE x>", b"\r\n"]
            ),
            texts(20).map(lambda t: t.encode("utf-8")),
            texts(20).map(lambda t: t.encode("utf-16")),
        )
    )
    return data[:start] + junk + data[end:]


def field_text(value: str, raw: bool) -> str:
    """A value for an XML template: escaped, or injected raw (then the document may break, as it should)."""
    return value if raw else escape(value)


# --- bulk files (tracciati): CSV and JSON -----------------------------------------------------------------

CSV_COLUMNS = [
    "idA2A",
    "idPendenza",
    "idDominio",
    "tipoPendenza",
    "causale",
    "importo",
    "dataScadenza",
    "identificativoPagatore",
    "anagraficaPagatore",
    "datiAllegati",
    "idVoce1",
    "importoVoce1",
    "descrizioneVoce1",
    "ibanAccredito1",
    "tipoContabilita1",
    "codiceContabilita1",
]
VALID_ROW = {
    "idA2A": "A2A-TRIBUTI",
    "idPendenza": "P1",
    "idDominio": "01234567897",
    "tipoPendenza": "TARI",
    "causale": "TARI",
    "importo": "25,00",
    "dataScadenza": "31/12/2030",
    "identificativoPagatore": "RSSMRA80A01H501U",
    "anagraficaPagatore": "Mario Rossi",
    "datiAllegati": '{"a": 1}',
    "idVoce1": "V1",
    "importoVoce1": "25,00",
    "descrizioneVoce1": "Quota",
    "ibanAccredito1": "IT21X0306909606000000123456",
    "tipoContabilita1": "CAPITOLO",
    "codiceContabilita1": "1010",
}


def check_rows(rows: list[tuple[int, Any]]) -> None:
    """Rows numbered 1..n, each an insert, an annulment, or an error naming its field with a short message."""
    assert [n for n, _ in rows] == list(range(1, len(rows) + 1))
    for _, row in rows:
        assert isinstance(row, InsertRow | AnnulRow | RowError)
        if isinstance(row, RowError):
            assert row.code in ("SINTASSI", "VER_015") and row.field, row
            assert 0 < len(row.describe()) < 1000, row


@st.composite
def csv_files(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    columns = draw(st.permutations(CSV_COLUMNS))
    delimiter = draw(st.sampled_from([";", ","]))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        row = dict(VALID_ROW)
        for name in draw(st.lists(st.sampled_from(CSV_COLUMNS), max_size=4)):
            row[name] = draw(amounts() if "importo" in name else texts())
        writer.writerow([row[c].replace("\x00", "") for c in columns])  # csv.writer refuses NUL itself
    text = out.getvalue()
    if draw(st.booleans()):
        text = spliced(text.encode("utf-8"), draw).decode("utf-8", errors="replace")
    return ("\ufeff" if draw(st.booleans()) else "") + text


@FAST
@given(csv_files())
@example("idPendenza;importo\nP1;1.000\nP2;1,000\nP3;" + "9" * 5000 + "\nP4;١٢\n")
@example("idPendenza;importo;datiAllegati\nP1;1;" + "[" * 50_000 + "]" * 50_000 + "\n")
@example('idPendenza;importo;causale\nP1;1;"' + "x" * 300_000 + '"\n')
@example("idPendenza;importo\nP1;1\x00;\n\n;;\n")
def test_csv_tracciato_rows_are_inserts_annulments_or_errors_naming_the_field(text: str) -> None:
    with case("tracciato CSV"):
        try:
            rows = list(read_tracciato(io.StringIO(text)))
        except TracciatoError as exc:  # only a file that is no tracciato at all (header, empty)
            assert str(exc)
            return
        check_rows(rows)


def test_csv_amounts_with_thousands_zeros_or_foreign_digits_are_refused_not_misread() -> None:
    text = "idA2A;idPendenza;importo\nA;P1;1.000\nA;P2;1,000\nA;P3;١٢\nA;P4;1.000,00\nA;P5;" + "9" * 20 + "\n"
    with case("tracciato CSV"):
        rows = dict(read_tracciato(io.StringIO(text)))
    for n in (1, 2, 3, 5):
        assert isinstance(rows[n], RowError) and rows[n].field == "importo", rows[n]
    assert "due decimali" in rows[1].message and "due decimali" in rows[2].message  # type: ignore[union-attr]
    assert not isinstance(rows[4], RowError) or rows[4].field != "importo"


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts(20)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts(10), children, max_size=4),
    max_leaves=6,
)


@st.composite
def pendenza_bodies(draw: Callable[[st.SearchStrategy[Any]], Any]) -> dict[str, Any]:
    """A PendenzaPut whose fields are valid or hostile, some left out, some of the wrong JSON type."""
    voce = {
        "idVocePendenza": "V1",
        "importo": "25.00",
        "descrizione": "Quota",
        "ibanAccredito": "IT21X0306909606000000123456",
        "tipoContabilita": "CAPITOLO",
        "codiceContabilita": "1010",
    }
    body: dict[str, Any] = {
        "idTipoPendenza": "TARI",
        "idDominio": "01234567897",
        "causale": "TARI",
        "soggettoPagatore": {"tipo": "F", "identificativo": "RSSMRA80A01H501U", "anagrafica": "Mario Rossi"},
        "importo": "25.00",
        "dataScadenza": "2030-12-31",
        "voci": [voce],
    }
    for name in draw(st.lists(st.sampled_from(sorted(body) + ["datiAllegati", "numeroAvviso"]), max_size=3)):
        body[name] = draw(st.one_of(amounts(), texts(), json_values))
    for name in draw(st.lists(st.sampled_from(sorted(voce)), max_size=2)):
        voce[name] = draw(st.one_of(amounts(), texts(), json_values))
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=1)):
        body.pop(name, None)
    return body


@st.composite
def json_files(draw: Callable[[st.SearchStrategy[Any]], Any]) -> str:
    inserts = []
    for n in range(draw(st.integers(min_value=0, max_value=2))):
        item = draw(pendenza_bodies()) | {"idA2A": "A2A-TRIBUTI", "idPendenza": f"P{n}"}
        if draw(st.booleans()):
            item["importo"] = draw(st.one_of(amounts(), st.decimals(allow_nan=False).map(Decimal)))
        inserts.append(draw(st.one_of(st.just(item), json_values)))
    annuls = draw(
        st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"idA2A": texts(), "idPendenza": texts(), "motivoAnnullamento": texts()}
                ),
                json_values,
            ),
            max_size=1,
        )
    )
    text = json.dumps({"inserimenti": inserts, "annullamenti": annuls}, default=str)
    if draw(st.booleans()):
        text = re.sub(r'"importo": "([^"\\]*)"', r'"importo": \1', text)  # amounts as bare JSON numbers
    if draw(st.booleans()):
        text = spliced(text.encode("utf-8"), draw).decode("utf-8", errors="replace")
    return text


@FAST
@given(json_files())
@example('{"inserimenti": [' + "[" * 100_000 + "]" * 100_000 + "]}")
@example(
    '{"inserimenti": [{"idA2A": "A", "idPendenza": "P", "importo": 1e400}, '
    '{"idA2A": "A", "idPendenza": "Q", "importo": 1e30}, {"idA2A": "A", "idPendenza": "R", "importo": NaN}, '
    '{"idA2A": "A", "idPendenza": "S", "importo": 1, "voci": [{"importo": 1e400}]}]}'
)
@example('{"inserimenti": [{"idA2A": "A", "idPendenza": "P", "importo": ' + "9" * 5000 + "}]}")
@example(
    '{"inserimenti": [{"idA2A": "A", "idPendenza": "P", "importo": 1, "datiAllegati": '
    + "[" * 5000
    + "]" * 5000
    + "}]}"
)
def test_json_tracciato_rows_are_inserts_annulments_or_errors_naming_the_field(text: str) -> None:
    with case("tracciato JSON"):
        try:
            rows = list(read_tracciato(io.StringIO(text)))
        except TracciatoError as exc:  # only a text that is not a JSON object at all
            assert str(exc)
            return
        check_rows(rows)


@pytest.mark.parametrize(
    "content",
    [
        "idPendenza;importo\nP1;caffè\n".encode("latin-1"),
        "idPendenza;importo\nP1;1\n".encode("utf-16"),
        b'{"inserimenti": [{"causale": "caff\xe8"}]}',
    ],
    ids=["latin-1 bytes", "UTF-16", "JSON latin-1"],
)
def test_bulk_file_in_a_wrong_encoding_is_refused_naming_the_byte(
    platform: Platform, tmp_path: Path, content: bytes
) -> None:
    position = 0 if content.startswith(b"\xff\xfe") else content.index(b"\xe8")
    expected = f"byte {position}"
    from prefect.logging import disable_run_logger

    from tasks.positions import register_file

    path = tmp_path / "tracciato.csv"
    path.write_bytes(content)
    with case("tracciato encoding"), disable_run_logger(), pytest.raises(TracciatoError) as caught:
        register_file.fn(path=str(path), id_a2a="A2A-TRIBUTI", id_dominio=None, debt_type=None)
    assert "UTF-8" in str(caught.value) and expected in str(caught.value)
    path.write_bytes(b"\xef\xbb\xbfidPendenza;importo\nP1;1\n")  # a UTF-8 BOM is fine
    with case("tracciato encoding"), disable_run_logger():
        assert (
            register_file.fn(path=str(path), id_a2a="A2A-TRIBUTI", id_dominio=None, debt_type=None).total_rows
            == 1
        )


# --- hardened XML ----------------------------------------------------------------------------------------

LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">'
        % (i, b"".join(b"&lol%s;" % (b"" if i == 1 else str(i - 1).encode()) for _ in range(10)))
        for i in range(1, 10)
    )
    + b"]><r>&lol9;</r>"
)
XXE_FILE = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
XXE_HTTP = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/secret">]><r>&x;</r>'
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r/>'
PARAMETER_ENTITY = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><r/>'
LATE = b'<?xml version="1.0"?><!--' + b"x" * 70_000 + b"-->"  # pushes a DOCTYPE past the 64 KiB peek


def iter_all(data: bytes) -> None:
    for _ in iterparse_xml(io.BytesIO(data)):
        pass


def utf16(document: bytes) -> bytes:
    return (
        document.decode()
        .replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
        .encode("utf-16")
    )


HOSTILE_XML = {
    "billion laughs": LAUGHS,
    "external entity file": XXE_FILE,
    "external entity http": XXE_HTTP,
    "external DTD": EXTERNAL_DTD,
    "parameter entity": PARAMETER_ENTITY,
    "DOCTYPE after 64 KiB": LATE + XXE_FILE[21:],
    "laughs after 64 KiB": LATE + LAUGHS[21:],
    "DOCTYPE in UTF-16": utf16(XXE_FILE),
    "laughs in UTF-16": utf16(LAUGHS),
    "100k levels": b"<a>" * 100_000 + b"</a>" * 100_000,
    "20 MB text node": b"<r>" + b"x" * (20 * 1024 * 1024) + b"</r>",
    "latin-1 declared UTF-8": '<?xml version="1.0" encoding="UTF-8"?><r>caffè</r>'.encode("latin-1"),
    "unknown encoding": b'<?xml version="1.0" encoding="EBCDIC-XYZ"?><r/>',
    "NUL byte": b"<r>\x00</r>",
    "unclosed": b"<r><a>",
}
UNSAFE = {k for k in HOSTILE_XML if "DOCTYPE" in k or "laughs" in k or "entity" in k or "DTD" in k}


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
def test_hardened_xml_refuses_dtds_entities_depth_size_and_bad_encodings(name: str) -> None:
    data = HOSTILE_XML[name]
    for parser, parse in (("xmlsafe parse_xml", parse_xml), ("xmlsafe iterparse_xml", iter_all)):
        with case(parser), bounded_memory(80), pytest.raises(ValueError) as caught:
            parse(data)
        if name in UNSAFE:  # refused as unsafe, or by libxml2's own entity amplification guard
            assert isinstance(caught.value, UnsafeXMLError) or "entity" in str(caught.value), caught.value
        else:
            assert isinstance(caught.value, MalformedXMLError), caught.value


def test_hardened_xml_reads_boms_and_utf16() -> None:
    with case("xmlsafe parse_xml"):
        assert parse_xml(b"\xef\xbb\xbf<r>x</r>").text == "x"
        assert parse_xml('<?xml version="1.0" encoding="UTF-16"?><r>è</r>'.encode("utf-16")).text == "è"


# --- the station (paForNode) and paaInviaRT, over HTTP -----------------------------------------------------

STATION_KEY = "hostile-inbound-key"
TRIBUTI = ("gestionale-tributi", "demo-tributi-password")
COMUNE, ISTITUTO = "01234567897", "80001234568"
PENDENZE = "/api/pendenze/v2"
@dataclass
class Platform:
    """The web process on the module's database, with one payable position of A2A-TRIBUTI."""

    url: str
    db: Database
    nav: str
    iuv: str
    http: httpx.Client  # one client for the module: a new one costs ~0.3 s (its TLS context)


def stranger() -> httpx.Client:
    """A client of its own, for a request that may break its connection (an expected 500)."""
    return httpx.Client(verify=False)  # noqa: S501 - plain HTTP on loopback; skips loading the CA bundle


@pytest.fixture(scope="module")
def platform(_databases: dict[str, Database], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    database = _databases["sqlite"]
    env: dict[str, str | None] = {
        "PAGOFLOW_DATABASE_URL": database.url,
        "PAGOFLOW_STATION_INBOUND_KEY": STATION_KEY,
        "PAGOFLOW_WORK_DIR": str(tmp_path_factory.mktemp("work")),
        **{f"PAGOFLOW_PAGOPA_{name}_URL": "http://127.0.0.1:9/closed"
           for name in ("CHECKOUT", "NODO", "GPD", "ACA", "FDR")},
        "PAGOFLOW_PAGOPA_CALL_ATTEMPTS": "1",
    }
    with web_on(database, env=env, registry=load_example_registry) as (url, _app), \
            httpx.Client(timeout=30) as http:
        body = iban_pendenza(id_dominio=COMUNE, causale="TARI ostile")
        put = http.put(f"{url}{PENDENZE}/pendenze/A2A-TRIBUTI/HOSTILE-1", json=body, auth=TRIBUTI)
        assert put.status_code == 201, put.text
        nav = put.json()["numeroAvviso"]
        yield Platform(url=url, db=database, nav=nav, iuv=nav[1:], http=http)


def require(condition: object, message: str) -> None:
    """Fail without a traceback: on Python 3.11, pytest rendering one (with ast) while the live server's
    thread logs its own (ast too, for the carets) can trip CPython's shared AST state (gh-106905) into an
    INTERNALERROR that ends the whole session."""
    if not condition:
        pytest.fail(message, pytrace=False)


def check_soap_answer(response: httpx.Response, *, answer_names: tuple[str, ...]) -> None:
    """200 with a schema-valid answer (a KO names a known fault, not PAA_SYSTEM_ERROR), or 400: a Fault."""
    text = response.text[:1000]
    require(response.status_code in (200, 400, 413), f"HTTP {response.status_code}: {text}")
    require(parse_xml(response.content).tag == f"{{{soap.SOAP_NS}}}Envelope", f"not an envelope: {text}")
    payload = soap.body_payload(response.content)
    if response.status_code != 200:
        fault_string = soap.text(payload, "faultstring")
        require(soap.payload_name(payload) == "Fault" and fault_string, f"no Fault: {text}")
        return
    require(soap.payload_name(payload) in answer_names, f"not an answer: {text}")
    fault = soap.find(payload, "fault")
    if fault is None:
        fault = soap.find(payload, "paaInviaRTRisposta", "fault")
    code = soap.text(fault, "faultCode")
    require(code != "PAA_SYSTEM_ERROR", f"the station failed on a client's input: {text}")
    require(code is None or soap.text(fault, "description"), f"a fault without a description: {text}")


@st.composite
def station_requests(draw: Callable[[st.SearchStrategy[Any]], Any], nav: str, iuv: str) -> tuple[str, bytes]:
    operation = draw(st.sampled_from(OPERATIONS))
    raw = draw(st.booleans())
    values = STATION_VALUES | {"nav": nav, "iuv": iuv, "receiptId": draw(st.sampled_from(["r-1", "r-2"]))}
    for name in draw(st.lists(st.sampled_from(sorted(values)), max_size=3)):
        pool = (
            amounts()
            if "mount" in name or name == "fee"
            else st.one_of(
                texts(),
                st.sampled_from(
                    [
                        "0001-01-01T00:00:00",
                        "9999-12-31T23:59:59-12:00",
                        "2026-02-30",
                        "99999999999",
                        "301000000000000000",
                        "KO",
                        "0",
                        "6",
                    ]
                ),
            )
        )
        values[name] = field_text(draw(pool), raw)
    body = station_envelope(operation, values)
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        body = spliced(body, draw)
    return operation, body


@HTTP
@given(data=st.data())
def test_station_answers_every_envelope_with_a_valid_answer_or_a_fault(platform: Platform, data: Any) -> None:
    operation, body = data.draw(station_requests(platform.nav, platform.iuv))
    with case("SOAP station (HTTP)", seconds=3):
        r = platform.http.post(
            f"{platform.url}/pagopa/paForNode",
            content=body,
            timeout=10,
            headers={
                "Content-Type": "text/xml",
                "SOAPAction": operation,
                "Ocp-Apim-Subscription-Key": STATION_KEY,
            },
        )
    check_soap_answer(r, answer_names=tuple(response for _, response in RESPONSES.values()))
    if r.status_code == 200:
        fault = soap.text(soap.body_payload(r.content), "fault", "faultCode")
        assert fault is None or fault in FAULT_STRINGS


@st.composite
def rt_documents(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    values = dict(RT_VALUES)
    raw = draw(st.booleans())
    for name in draw(st.lists(st.sampled_from(sorted(values)), max_size=3)):
        pool = (
            amounts()
            if name in ("amount", "single")
            else st.one_of(
                texts(),
                st.sampled_from(
                    ["0001-01-01T00:00:00", "9999-12-31T23:59:59", "2026-13-01", "0", "1", "2", "9"]
                ),
            )
        )
        values[name] = field_text(draw(pool), raw)
    document = RT_TEMPLATE.format(**values).encode("utf-8")
    return spliced(document, draw) if draw(st.integers(min_value=0, max_value=3)) == 0 else document


@HTTP
@given(
    rt=rt_documents(),
    header=st.fixed_dictionaries(
        {
            "idDominio": st.sampled_from([ISTITUTO, COMUNE, "99999999999"]),
            "iuv": texts(20),
            "ccp": texts(20),
            "tipoFirma": st.sampled_from(["", "0", "1", "<x/>"]),
        }
    ),
    encoding=st.sampled_from(["base64", "raw", "junk"]),
)
def test_paa_invia_rt_answers_every_request_with_an_esito_or_a_fault(
    platform: Platform, rt: bytes, header: dict[str, str], encoding: str
) -> None:
    encoded = {
        "base64": base64.b64encode(rt).decode(),
        "raw": escape(rt.decode("utf-8", "replace")),
        "junk": "!!not base64!!",
    }[encoding]
    values = {k: escape(v) for k, v in header.items() if k != "tipoFirma"} | {
        "tipoFirma": header["tipoFirma"],
        "rt": encoded,
    }
    with case("paaInviaRT (HTTP)", seconds=3):
        r = platform.http.post(
            f"{platform.url}/pagopa/PaPerNodo",
            content=INVIA_RT.format(**values).encode("utf-8"),
            timeout=10,
            headers={"SOAPAction": "paaInviaRT", "Ocp-Apim-Subscription-Key": STATION_KEY},
        )
    check_soap_answer(r, answer_names=("paaInviaRTRisposta",))


@pytest.mark.parametrize("path", ["/pagopa/paForNode", "/pagopa/PaPerNodo"])
@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
def test_soap_endpoints_refuse_hostile_xml_with_a_fault(platform: Platform, path: str, name: str) -> None:
    with case("SOAP hostile XML (HTTP)", seconds=5):
        r = platform.http.post(
            platform.url + path,
            content=HOSTILE_XML[name],
            timeout=30,
            headers={"Content-Type": "text/xml", "Ocp-Apim-Subscription-Key": STATION_KEY},
        )
    assert r.status_code in (400, 413), r.text[:300]
    assert soap.text(soap.body_payload(r.content), "faultstring")
    assert b"root:" not in r.content  # /etc/passwd never echoed


# --- huge bodies on every HTTP surface: 413 before anything is read, memory flat ----------------------------

BODY_PATHS = [
    ("PUT", "/api/pendenze/v2/pendenze/A2A-TRIBUTI/BIG"),
    ("POST", "/api/pagamento/v2/pagamenti"),
    ("PUT", "/api/ragioneria/v3/riconciliazioni/01234567897/BIG"),
    ("POST", "/pagopa/paForNode"),
    ("POST", "/pagopa/PaPerNodo"),
]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("method", "path"), BODY_PATHS)
def test_fifty_megabyte_bodies_are_refused_with_413_in_bounded_memory(
    platform: Platform, method: str, path: str, chunked: bool
) -> None:
    size = 50 * 1024 * 1024
    chunk = b"x" * (1024 * 1024)

    def stream() -> Iterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    # Both stream from one 1 MiB chunk, so that only the server's memory is measured; the first declares
    # its length (refused before reading), the second sends chunks (counted as they come).
    length = {} if chunked else {"Content-Length": str(size)}
    with case("HTTP 50 MB body", seconds=20), bounded_memory(24):
        r = platform.http.request(
            method,
            platform.url + path,
            content=stream(),
            auth=TRIBUTI,
            headers={"Content-Type": "application/json", "Ocp-Apim-Subscription-Key": STATION_KEY} | length,
            timeout=60,
        )
    assert r.status_code == 413, r.text[:300]
    if path.startswith("/pagopa/"):
        assert "larger than" in (soap.text(soap.body_payload(r.content), "faultstring") or "")
    else:
        assert r.json()["descrizione"] == "Richiesta troppo grande"


# --- REST bodies and queries, over HTTP --------------------------------------------------------------------

GOVPAY_ERROR = {"categoria", "codice", "descrizione", "dettaglio"}


def check_rest_answer(r: httpx.Response, allowed: set[int]) -> None:
    require(r.status_code in allowed, f"HTTP {r.status_code} not in {sorted(allowed)}: {r.text[:500]}")
    if r.status_code >= 400:
        body = r.json()
        require(set(body) == GOVPAY_ERROR and body["descrizione"], f"not GovPay's error body: {body}")
        # a 400 names the field or says what is wrong
        require(r.status_code != 400 or body["dettaglio"], f"a syntax error without detail: {body}")


def raw_json(value: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    text = json.dumps(value, default=str, ensure_ascii=draw(st.booleans()))
    return spliced(text.encode(), draw) if draw(st.integers(min_value=0, max_value=4)) == 0 else text.encode()


@HTTP
@given(data=st.data())
def test_put_pendenza_answers_every_body_with_a_result_or_a_govpay_error(
    platform: Platform, data: Any
) -> None:
    body = raw_json(data.draw(st.one_of(pendenza_bodies(), json_values)), data.draw)
    id_pendenza = data.draw(st.sampled_from(["H-1", "H-2", "HOSTILE-1", "a%2Fb", "x" * 36, "%00"]))
    with case("API Pendenze PUT (HTTP)", seconds=3):
        r = platform.http.put(
            f"{platform.url}/api/pendenze/v2/pendenze/A2A-TRIBUTI/{id_pendenza}",
            content=body,
            auth=TRIBUTI,
            timeout=10,
            headers={"Content-Type": "application/json"},
            params={"stampaAvviso": data.draw(st.sampled_from(["false", "true", "maybe"]))},
        )
    check_rest_answer(r, {200, 201, 400, 403, 404, 422})


@HTTP
@given(data=st.data())
def test_patch_and_pagamenti_answer_every_body_with_a_result_or_a_govpay_error(
    platform: Platform, data: Any
) -> None:
    op = st.fixed_dictionaries(
        {
            "op": st.sampled_from(["REPLACE", "replace", "ADD", ""]),
            "path": st.sampled_from(["/stato", "/descrizioneStato", "/importo", "x"]),
            "value": st.one_of(texts(), st.sampled_from(["ANNULLATA", "NON_ESEGUITA"])),
        }
    )
    patch = raw_json(data.draw(st.one_of(st.lists(op, max_size=3), json_values)), data.draw)
    with case("API Pendenze PATCH (HTTP)", seconds=3):
        r = platform.http.patch(
            f"{platform.url}/api/pendenze/v2/pendenze/A2A-TRIBUTI/HOSTILE-2",
            content=patch,
            auth=TRIBUTI,
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
    check_rest_answer(r, {200, 400, 403, 404, 422})
    item = st.one_of(
        st.fixed_dictionaries({"idA2A": texts(), "idPendenza": texts()}),
        st.fixed_dictionaries(
            {
                "idDominio": st.sampled_from([COMUNE, "x"]),
                "numeroAvviso": st.sampled_from([platform.nav, "0" * 18, "x"]),
            }
        ),
        pendenza_bodies().map(lambda b: b | {"idA2A": "A2A-TRIBUTI", "idPendenza": "CART-1"}),
        json_values,
    )
    cart = {
        "pendenze": data.draw(st.lists(item, max_size=6)),
        "urlRitorno": data.draw(st.one_of(st.none(), texts(), st.just("javascript:alert(1)"))),
        "email": data.draw(st.one_of(st.none(), texts())),
    }
    with case("API Pagamento POST (HTTP)", seconds=3):
        r = platform.http.post(
            f"{platform.url}/api/pagamento/v2/pagamenti",
            content=raw_json(cart, data.draw),
            auth=TRIBUTI,
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
    check_rest_answer(r, {201, 400, 403, 404, 422, 502})


@HTTP
@given(data=st.data())
def test_put_riconciliazione_answers_every_body_with_a_result_or_a_govpay_error(
    platform: Platform, data: Any
) -> None:
    body = {
        "causale": data.draw(texts()),
        "importo": data.draw(st.one_of(amounts(), st.floats())),
        "dataValuta": data.draw(st.one_of(texts(), st.just("2026-01-01"))),
        "dataContabile": data.draw(st.one_of(texts(), st.just("2026-01-01"))),
        "sct": data.draw(texts()),
        "iban": data.draw(texts()),
    }
    content = raw_json(data.draw(st.one_of(st.just(body), json_values)), data.draw)
    rec_id = data.draw(st.sampled_from(["R-1", "R-2", "x" * 40, "a b"]))
    with case("Ragioneria PUT (HTTP)", seconds=3):
        r = platform.http.put(
            f"{platform.url}/api/ragioneria/v3/riconciliazioni/{COMUNE}/{rec_id}",
            content=content,
            auth=TRIBUTI,
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
    check_rest_answer(r, {200, 202, 400, 403, 404, 422})


LISTS = [
    "/api/pendenze/v2/pendenze",
    "/api/ragioneria/v3/flussiRendicontazione",
    "/api/ragioneria/v3/riconciliazioni",
    "/api/ragioneria/v3/riscossioni",
    "/api/ragioneria/v3/ricevute",
]


@HTTP
@given(data=st.data())
def test_list_queries_answer_every_parameter_with_a_page_or_a_govpay_error(
    platform: Platform, data: Any
) -> None:
    path = data.draw(st.sampled_from(LISTS))
    limit = 10**30
    params = {
        name: data.draw(st.one_of(texts(20), st.integers(min_value=-limit, max_value=limit).map(str)))
        for name in data.draw(
            st.lists(
                st.sampled_from(
                    [
                        "pagina",
                        "risultatiPerPagina",
                        "idDominio",
                        "dataDa",
                        "dataA",
                        "stato",
                        "iuv",
                        "idFlusso",
                        "idA2A",
                        "idDebitore",
                        "esito",
                        "tipo",
                        "sct",
                        "escludiObsoleti",
                    ]
                ),
                max_size=4,
                unique=True,
            )
        )
    }
    with case("REST list queries (HTTP)", seconds=3):
        r = platform.http.get(platform.url + path, params=params, auth=TRIBUTI, timeout=10)
    check_rest_answer(r, {200, 400, 403})


@pytest.mark.parametrize("path", LISTS)
def test_a_page_number_beyond_64_bits_is_a_syntax_error(platform: Platform, path: str) -> None:
    with case("REST list queries (HTTP)"):
        r = stranger().get(platform.url + path, params={"pagina": "9" * 30}, auth=TRIBUTI, timeout=10)
    check_rest_answer(r, {400})


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("method", "path"), BODY_PATHS[:3])
def test_json_nested_100k_levels_is_a_syntax_error(
    platform: Platform, method: str, path: str
) -> None:
    with case("REST deep JSON (HTTP)"):
        r = stranger().request(
            method,
            platform.url + path,
            content=DEEP_JSON,
            auth=TRIBUTI,
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
    check_rest_answer(r, {400})


@pytest.mark.parametrize(
    "content",
    [
        b'{"causale": "caff\xe8"}',
        '{"causale": "x"}'.encode("utf-16"),
        b"\xef\xbb\xbf{}",
        b'{"importo": 1e400}',
        b'{"importo": NaN}',
        b'{"importo": ' + b"9" * 5000 + b"}",
        b"",
        b"null",
        b"\x00" * 10,
    ],
    ids=["latin-1", "UTF-16", "BOM", "1e400", "NaN", "5000 digits", "empty", "null", "NUL bytes"],
)
def test_put_pendenza_bodies_in_wrong_encodings_or_numbers_are_syntax_errors(
    platform: Platform, content: bytes
) -> None:
    with case("API Pendenze PUT (HTTP)"):
        r = platform.http.put(
            f"{platform.url}/api/pendenze/v2/pendenze/A2A-TRIBUTI/ENC",
            content=content,
            auth=TRIBUTI,
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
    check_rest_answer(r, {400})


# --- reporting flows: FlussoRiversamento XML and FdR REST JSON ---------------------------------------------


def fr_sample() -> bytes:
    return (
        get_settings().treasury_specs_dir / "synthetic" / "fr" / "FR_2024-07-25DEMOITMMXXX-S0000001.xml"
    ).read_bytes()


FR_FIELDS = [
    "identificativoFlusso",
    "dataOraFlusso",
    "dataRegolamento",
    "codiceIdentificativoUnivoco",
    "numeroTotalePagamenti",
    "importoTotalePagamenti",
    "identificativoUnivocoVersamento",
    "identificativoUnivocoRiscossione",
    "indiceDatiSingoloPagamento",
    "singoloImportoPagato",
    "codiceEsitoSingoloPagamento",
    "dataEsitoSingoloPagamento",
]


@st.composite
def fr_documents(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    text = fr_sample().decode()
    raw = draw(st.booleans())
    for name in draw(st.lists(st.sampled_from(FR_FIELDS), max_size=3)):
        matches = list(re.finditer(rf"(<pay_i:{name}>)([^<]*)(</pay_i:{name}>)", text))
        chosen = matches[draw(st.integers(min_value=0, max_value=len(matches) - 1))]
        value = draw(
            amounts()
            if "mport" in name or "numero" in name or "indice" in name
            else st.one_of(
                texts(),
                st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2024-02-30"]),
            )
        )
        text = text[: chosen.start(2)] + field_text(value, raw) + text[chosen.end(2) :]
    data = text.encode("utf-8")
    return spliced(data, draw) if draw(st.integers(min_value=0, max_value=3)) == 0 else data


def read_whole_flow(data: bytes) -> None:
    reader = read_flow(io.BytesIO(data), batch_size=2)
    for batch in reader.batches():
        for line in batch:
            assert line.amount.is_finite() and line.amount == line.amount.quantize(Decimal("0.01"))


@FAST
@given(fr_documents())
@example(fr_sample().replace(b">150.00<", b">1e100<"))
@example(fr_sample().replace(b">3</pay_i:numero", b">" + b"9" * 5000 + b"</pay_i:numero"))
@example(fr_sample().replace(b">2024-07-25T23:10:00<", b">0001-01-01T00:00:00<"))
@example(fr_sample().replace(b">50.00<", b">" + b"1" * 100 + b".00<"))
def test_flusso_riversamento_is_read_or_refused_with_a_flow_format_error(data: bytes) -> None:
    with case("FR XML (FlussoRiversamento)"):
        try:
            read_whole_flow(data)
        except FlowFormatError as exc:
            assert exc.kind in ("malformed", "unsafe", "not_a_flow", "invalid") and exc.reason, exc
            assert len(str(exc)) < 1000


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
def test_flusso_riversamento_refuses_hostile_xml(name: str) -> None:
    with case("FR XML (FlussoRiversamento)"), bounded_memory(80), pytest.raises(FlowFormatError) as caught:
        read_whole_flow(HOSTILE_XML[name])
    if name in UNSAFE:  # refused as unsafe, or by libxml2's own entity amplification guard
        assert caught.value.kind == "unsafe" or "entity" in caught.value.reason, caught.value
    else:
        assert caught.value.kind == "malformed", caught.value


@st.composite
def fdr_pages(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
    payment = {
        "index": 1,
        "iuv": "01000000000000144",
        "iur": "IUR-1",
        "idTransfer": 1,
        "pay": 25.0,
        "payStatus": "EXECUTED",
        "payDate": "2026-01-01T10:00:00Z",
    }
    for name in draw(st.lists(st.sampled_from(sorted(payment)), max_size=3)):
        payment[name] = draw(
            st.one_of(
                json_values,
                amounts(),
                st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00", 1e30, -1, 10**40]),
            )
        )
    page = {"data": [payment], "metadata": {"pageNumber": 1, "totPage": 1}}
    return draw(st.one_of(st.just(page), json_values, st.just({"data": payment, "metadata": {}})))


@FAST
@given(fdr_pages(), st.booleans())
@example(
    {
        "data": [{"index": 1, "iuv": "A", "iur": "B", "idTransfer": 1, "pay": 1e30, "payStatus": "EXECUTED"}],
        "metadata": {"pageNumber": 1, "totPage": 1},
    },
    False,
)
def test_fdr_payments_page_is_read_or_refused_as_a_schema_error(
    platform: Platform, page: Any, cut: bool
) -> None:
    from connectors.journal import EventJournal

    text = json.dumps(page, default=str).encode()
    body = text[: len(text) // 2] if cut else text

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    client = FdrClient(
        base_url="http://fdr.test",
        subscription_key=None,
        transport=httpx.MockTransport(answer),
        journal=EventJournal(session_factory=platform.db.session),
        attempts=1,
        backoff=0,
    )
    with case("FdR REST JSON"), client:
        try:
            got = client.get_payments(ec=COMUNE, fdr="2026-01-01PSP-1", revision=1, psp="PSP")
        except PagopaError as exc:
            assert str(exc)
            return
    for payment in got.payments:
        assert payment.amount.is_finite() and payment.amount == payment.amount.quantize(Decimal("0.01"))


# --- receipts (paSendRT) and legacy RTs as parsed elements --------------------------------------------------


@FAST
@given(data=st.data())
def test_receipt_elements_give_a_receipt_or_a_value_error(data: Any) -> None:
    operation, body = data.draw(station_requests("301000000000000144", "01000000000000144"))
    with case("receipt XML (paSendRT)"):
        try:
            payload = soap.body_payload(body)
            receipt = receipt_from_xml(payload, id_pa=COMUNE, raw=body)
        except ValueError as exc:  # MalformedXMLError, SoapSyntaxError and the mapping's own refusals
            assert str(exc)
            return
        assert receipt.amount.is_finite() and receipt.receipt_id
        receipt.problems()


@FAST
@given(rt_documents())
@example(RT_TEMPLATE.format(**RT_VALUES | {"amount": "abc", "single": "1e999999"}).encode())
@example(RT_TEMPLATE.format(**RT_VALUES | {"day": "2026-13-45", "when": "0001-01-01T00:00:00"}).encode())
def test_rt_documents_give_rt_data_or_an_rpt_error(document: bytes) -> None:
    with case("RT XML (parse_rt)"):
        try:
            rt = parse_rt(document)
        except RptError as exc:
            assert str(exc)
            return
        assert rt.amount.is_finite()


# --- treasury files in every format -------------------------------------------------------------------------

CSV_MAPPING = CsvMapping(
    amount="Importo",
    account="IBAN",
    value_date="Data valuta",
    booking_date="Data contabile",
    remittance=("Causale",),
    end_to_end_id="E2E",
    bank_movement_id="Id",
)
CSV_SAMPLE = (
    b"Id;IBAN;Data valuta;Data contabile;Importo;Causale;E2E\n"
    b"1;IT60X0542811101000000123456;26/07/2024;26/07/2024;150,00;"
    b"/PUR/LGPE-RIVERSAMENTO/URI/2024-07-25DEMOITMMXXX-S0000001;E2E-1\n"
    b"2;IT60X0542811101000000123456;26/07/2024;26/07/2024;-12,50;COMMISSIONI;\n"
)
TREASURY_SAMPLES = {
    TreasuryFormat.OPI: "opi_giornale_di_cassa_1_8_pagopa.xml",
    TreasuryFormat.CAMT053: "camt053.001.02_tesoreria_pagopa.xml",
    TreasuryFormat.CBI_RH: "cbi_rh_tesoreria_pagopa.txt",
    TreasuryFormat.MT940: "mt940_tesoreria_pagopa.sta",
}
TREASURY_FIELDS = {  # (pattern of a field's value, kind of value to put there)
    TreasuryFormat.OPI: [
        (r"<importo>([^<]*)<", "amount"),
        (r"<data_movimento>([^<]*)<", "text"),
        (r"<causale>([^<]*)<", "text"),
        (r"<tipo_movimento>([^<]*)<", "text"),
        (r"<tipo_operazione>([^<]*)<", "text"),
    ],
    TreasuryFormat.CAMT053: [
        (r"<Amt[^>]*>([^<]*)<", "amount"),
        (r"<Dt>([^<]*)<", "text"),
        (r"<Ustrd>([^<]*)<", "text"),
        (r"<CdtDbtInd>([^<]*)<", "text"),
    ],
    TreasuryFormat.CBI_RH: [
        (r"\n 62.{22}[CD](\d{12},\d\d)", "amount"),
        (r"\n 62.{10}(\d{6})", "text"),
        (r"\n 63.{10}(?:RI1|YYY)(.{20})", "text"),
    ],
    TreasuryFormat.MT940: [
        (r":61:\d{10}C([\d,]+)", "amount"),
        (r":61:(\d{6})", "text"),
        (r":86:([^\n]*)", "text"),
    ],
    TreasuryFormat.CSV: [
        (r";(150,00);", "amount"),
        (r";(26/07/2024);", "text"),
        (r";(COMMISSIONI);", "text"),
    ],
}


def treasury_sample(fmt: TreasuryFormat) -> bytes:
    if fmt is TreasuryFormat.CSV:
        return CSV_SAMPLE
    return (get_settings().treasury_specs_dir / "synthetic" / TREASURY_SAMPLES[fmt]).read_bytes()


@st.composite
def treasury_files(draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[TreasuryFormat, bytes]:
    fmt = draw(st.sampled_from(list(TREASURY_FIELDS)))
    text = treasury_sample(fmt).decode("utf-8")
    raw = draw(st.booleans()) or fmt not in (TreasuryFormat.OPI, TreasuryFormat.CAMT053)
    for pattern, kind in draw(st.lists(st.sampled_from(TREASURY_FIELDS[fmt]), max_size=3)):
        found = list(re.finditer(pattern, text))
        if not found:
            continue
        chosen = found[draw(st.integers(min_value=0, max_value=len(found) - 1))]
        value = draw(amounts() if kind == "amount" else texts())
        text = text[: chosen.start(1)] + field_text(value, raw) + text[chosen.end(1) :]
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"])), errors="replace")
    return fmt, (spliced(data, draw) if draw(st.integers(min_value=0, max_value=3)) == 0 else data)


def read_treasury(fmt: TreasuryFormat, data: bytes) -> list[Movement]:
    return list(
        read_movements(
            io.BytesIO(data),
            fmt=fmt,
            source_name="ostile.dat",
            csv_mapping=CSV_MAPPING if fmt is TreasuryFormat.CSV else None,
        )
    )


@settings(FAST, max_examples=120)
@given(treasury_files())
@example(
    (TreasuryFormat.OPI, treasury_sample(TreasuryFormat.OPI).replace(b">150.00<", b">" + b"9" * 40 + b"<"))
)
@example((TreasuryFormat.CSV, CSV_SAMPLE.replace(b"150,00", b"9" * 40 + b",00")))
@example((TreasuryFormat.CSV, CSV_SAMPLE.replace(b"150,00", b"150,001")))
@example(
    (
        TreasuryFormat.CBI_RH,
        treasury_sample(TreasuryFormat.CBI_RH).replace(b"000000000150,00", b"99999999999999,9"),
    )
)
def test_treasury_files_give_movements_or_an_error_naming_record_or_field(
    file: tuple[TreasuryFormat, bytes],
) -> None:
    fmt, data = file
    with case(f"treasury {fmt.value}"):
        try:
            movements = read_treasury(fmt, data)
        except TreasuryFormatError as exc:
            assert exc.source_name == "ostile.dat" and (exc.record is not None or exc.field), exc
            assert exc.reason and len(str(exc)) < 1000, exc
            return
    for m in movements:
        assert (
            m.amount.is_finite() and m.amount == m.amount.quantize(Decimal("0.01")) and abs(m.amount) < 10**12
        )
        m.fingerprint()


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
@pytest.mark.parametrize("fmt", [TreasuryFormat.OPI, TreasuryFormat.CAMT053])
def test_treasury_xml_formats_refuse_hostile_xml(fmt: TreasuryFormat, name: str) -> None:
    with case(f"treasury {fmt.value}"), bounded_memory(80), pytest.raises(TreasuryFormatError) as caught:
        read_treasury(fmt, HOSTILE_XML[name])
    assert caught.value.source_name == "ostile.dat" and (caught.value.record or caught.value.field)


@settings(FAST, max_examples=80)
@given(
    st.binary(max_size=HEAD_BYTES), st.sampled_from(["gdc.xml", "estratto.csv", "x.sta", "x", "../../x.txt"])
)
def test_treasury_format_detection_names_a_format_or_refuses(head: bytes, name: str) -> None:
    with case("treasury detect_format"):
        try:
            fmt = detect_format(head=head, name=name)
        except TreasuryFormatError as exc:
            assert exc.source_name == name and str(exc)
            return
    assert isinstance(fmt, TreasuryFormat)


# --- remittance strings ------------------------------------------------------------------------------------

LONG_REMITTANCES = {
    "RFS then 100k short chunks": "/RFS/RF18 " + "A " * 100_000,
    "20k flow markers": "/PUR/LGPE-RIVERSAMENTO/URI/" * 20_000,
    "markers with long wrapped ids": ("LGPE-RIVERSAMENTO/URI/" + "A" * 36 + "\n") * 10_000,
    "100k line breaks": "/PUR/LGPE-RIVERSAMENTO/URI/2024-01-01" + "A\n" * 100_000,
    "spaced marker letters": "L G P E " * 50_000,
    "1 MB of slashes": "/" * 1_000_000,
    "50k RFB": "/RFB/" * 50_000,
}


@pytest.mark.parametrize("name", sorted(LONG_REMITTANCES))
def test_long_hostile_remittances_are_read_in_linear_time(name: str) -> None:
    with case("remittance (long)", seconds=2.0):
        result = parse_remittance(LONG_REMITTANCES[name])
    assert result.kind in ("flow", "iuv", "truncated", "none")


@settings(FAST, max_examples=25)
@given(
    st.lists(
        st.sampled_from(
            [
                "/PUR/",
                "LGPE-RIVERSAMENTO",
                "/URI/",
                "/TXT/1",
                "/RFB/",
                "/RFS/RF18 ",
                "A",
                "2024-07-25",
                "\n",
                " ",
                "-",
                "/ZZ2",
            ]
        ),
        min_size=1,
        max_size=20,
    ),
    st.integers(min_value=100, max_value=20_000),
)
def test_remittances_of_repeated_marker_pieces_are_read_in_bounded_time(
    pieces: list[str], times: int
) -> None:
    unit = "".join(pieces)
    text = unit * min(times, 200_000 // len(unit))  # 200 kB: far beyond any bank field, and ~0.4 s if linear
    with case("remittance (long)", seconds=2.0):
        result = parse_remittance(text)
    assert result.kind in ("flow", "iuv", "truncated", "none")
