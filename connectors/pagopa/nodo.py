"""The legacy Node SOAP service for ECs (``wsdl/nodeForPa.wsdl``): the FR list and the FR itself, via zeep.

The WSDL is read from the configured specs folder (never fetched); its service address is replaced by the
configured Node URL. Faults come inside the answer element (``fault``), as the Node sends them with HTTP 200.
The FR travels base64-encoded in one text node; a big flow's node exceeds libxml2's 10 MB default cap, so
``get_flow_xml`` alone lifts that cap (``xml_huge_tree``) while DTDs, entities and external references stay
forbidden and the answer size is bounded by ``max_answer_bytes``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from lxml import etree
from pydantic import BaseModel, ConfigDict, SecretStr
from zeep import Client, Plugin, Settings
from zeep import exceptions as zeep_errors
from zeep.transports import Transport

from connectors.journal import EventJournal, Exchange
from connectors.pagopa.errors import (
    PagopaAuthError,
    PagopaBusinessError,
    PagopaError,
    PagopaNotFoundError,
    PagopaRetriableError,
    PagopaSchemaError,
)
from models.journal import Outcome, Role
from models.settings import get_settings
from rules.redaction import register_secret

log = logging.getLogger(__name__)

COMPONENT = "nodo"
WSDL = "wsdl/nodeForPa.wsdl"
BINDING = "{http://pagopa-api.pagopa.gov.it/node/nodeForPa.xsd}nodeForPaBinding"
MAX_ANSWER_BYTES = 512 * 1024 * 1024
_AUTH_FAULTS = frozenset(
    {
        "PPT_AUTENTICAZIONE",
        "PPT_AUTORIZZAZIONE",
        "PPT_STAZIONE_INT_PA_SCONOSCIUTA",
        "PPT_INTERMEDIARIO_PA_SCONOSCIUTO",
        "PPT_STAZIONE_INT_PA_DISABILITATA",
    }
)
_NOT_FOUND_FAULTS = frozenset({"PPT_ID_FLUSSO_SCONOSCIUTO"})
_RETRIABLE_FAULTS = frozenset({"PPT_SYSTEM_ERROR"})


class NodoFlowRef(BaseModel):
    """A flow as the Node's list names it."""

    model_config = ConfigDict(frozen=True)

    id_flusso: str
    flow_at: datetime | None = None


class _Capture(Plugin):
    """Keeps the last envelopes sent and received, serialised only when the journal needs them."""

    def __init__(self) -> None:
        self.sent: etree._Element | None = None
        self.received: etree._Element | None = None

    def egress(self, envelope: Any, http_headers: Any, operation: Any, binding_options: Any) -> Any:
        self.sent, self.received = envelope, None
        return envelope, http_headers

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> Any:
        self.received = envelope
        return envelope, http_headers


class _BoundedTransport(Transport):
    """A zeep transport that refuses answers larger than a bound (before zeep parses them)."""

    def __init__(self, *, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes

    def post(self, address: str, message: Any, headers: Any) -> requests.Response:
        response = self.session.post(
            address, data=message, headers=headers, timeout=self.operation_timeout, stream=True
        )
        chunks, size = [], 0
        for chunk in response.iter_content(256 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                response.close()
                raise PagopaSchemaError(f"answer larger than {self.max_bytes} bytes", operation="post")
            chunks.append(chunk)
        response._content = b"".join(chunks)  # noqa: SLF001 - requests' own cache of the body
        return response


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NodoClient:
    """The Node's FR operations for one station; the requests session is injected (or a new one is made)."""

    def __init__(
        self,
        *,
        url: str,
        broker_id: str,
        station_id: str,
        password: SecretStr,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        journal: EventJournal | None = None,
        wsdl_path: Path | None = None,
        attempts: int = 3,
        backoff: float = 1.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        register_secret(password.get_secret_value())
        self._broker_id, self._station_id, self._password = broker_id, station_id, password
        self._capture = _Capture()
        transport = _BoundedTransport(
            max_bytes=max_answer_bytes, session=session, timeout=timeout, operation_timeout=timeout
        )
        settings = Settings(
            strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        wsdl = wsdl_path or get_settings().spec_path(WSDL)
        self._client = Client(str(wsdl), transport=transport, settings=settings, plugins=[self._capture])
        self._service = self._client.create_service(BINDING, url)
        self._journal = journal or EventJournal()
        self._attempts, self._backoff = attempts, backoff

    def close(self) -> None:
        """Close the HTTP session if this client made it."""
        self._client.transport.session.close()

    def __enter__(self) -> NodoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations --------------------------------------------------------------------------------------

    def list_flows(self, *, ec: str | None = None, psp: str | None = None) -> list[NodoFlowRef]:
        """The flows the Node holds for the EC (or for every EC of the broker), newest revision each."""
        answer = self._call(
            "nodoChiediElencoFlussiRendicontazione",
            keys={"id_dominio": ec, "psp": psp},
            identificativoDominio=ec,
            identificativoPSP=psp,
        )
        elenco = answer.elencoFlussiRendicontazione
        if elenco is None:
            return []
        return [
            NodoFlowRef(id_flusso=item.identificativoFlusso, flow_at=_aware(item.dataOraFlusso))
            for item in (elenco.idRendicontazione or [])
            if item is not None
        ]

    def get_flow_xml(self, *, ec: str, id_flusso: str, psp: str | None = None) -> bytes:
        """The FlussoRiversamento document of a flow, decoded from base64 (not yet parsed)."""
        with self._client.settings(xml_huge_tree=True):
            answer = self._call(
                "nodoChiediFlussoRendicontazione",
                keys={"id_dominio": ec, "id_flusso": id_flusso, "psp": psp},
                identificativoDominio=ec,
                identificativoPSP=psp,
                identificativoFlusso=id_flusso,
            )
        data = answer.xmlRendicontazione
        if not data:
            raise PagopaSchemaError(
                "answer without xmlRendicontazione", operation="nodoChiediFlussoRendicontazione"
            )
        return bytes(data)

    # --- the one call path -------------------------------------------------------------------------------

    def _call(self, operation: str, *, keys: dict[str, Any], **fields: Any) -> Any:
        """One operation: journaled per attempt, retried on retriable faults, errors classified."""
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return self._attempt(operation, keys=keys | {"attempt": attempt}, **fields)
            except PagopaError as exc:
                if not exc.retriable or attempt == self._attempts:
                    raise
                log.info(
                    "nodo %s attempt %d failed (%s), again in %.1fs", operation, attempt, exc.reason, delay
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _attempt(self, operation: str, *, keys: dict[str, Any], **fields: Any) -> Any:
        with self._journal.exchange(
            component=COMPONENT, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            try:
                answer = getattr(self._service, operation)(
                    identificativoIntermediarioPA=self._broker_id,
                    identificativoStazioneIntermediarioPA=self._station_id,
                    password=self._password.get_secret_value(),
                    **fields,
                )
            except PagopaError:
                self._payloads(ex, failed=True)
                raise
            except requests.Timeout as exc:
                raise PagopaRetriableError(f"timeout: {exc}", operation=operation) from exc
            except requests.RequestException as exc:
                raise PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            except zeep_errors.TransportError as exc:
                ex.http_status = exc.status_code
                ex.response = exc.content
                status = exc.status_code or 0
                # zeep reports an answer it cannot parse (e.g. cut short) as a TransportError with its status.
                retriable = status >= 500 or status == 429 or status < 300
                error_type = (
                    PagopaRetriableError
                    if retriable
                    else PagopaAuthError
                    if status in (401, 403)
                    else PagopaBusinessError
                )
                message = f"HTTP {status}: {exc.message}"[:500]
                raise error_type(message, operation=operation, status=status) from exc
            except zeep_errors.XMLSyntaxError as exc:
                ex.response = exc.content
                raise PagopaRetriableError(
                    f"answer is not well-formed XML: {exc}", operation=operation
                ) from exc
            except zeep_errors.Fault as exc:
                self._payloads(ex, failed=True)
                raise PagopaRetriableError(
                    f"SOAP Fault {exc.code}: {exc.message}", operation=operation, code=str(exc.code)
                ) from exc
            except (
                zeep_errors.ValidationError,
                zeep_errors.XMLParseError,
                zeep_errors.LookupError,
                zeep_errors.DTDForbidden,
                zeep_errors.EntitiesForbidden,
                zeep_errors.ExternalReferenceForbidden,
            ) as exc:
                self._payloads(ex, failed=True)
                raise PagopaSchemaError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            ex.http_status = 200
            fault = getattr(answer, "fault", None)
            if fault is not None:
                self._payloads(ex, failed=True)
                raise self._fault(ex, operation, fault)
            self._payloads(ex, failed=False)
            return answer

    def _fault(self, ex: Exchange, operation: str, fault: Any) -> PagopaError:
        code = str(fault.faultCode)
        message = f"{code}: {fault.faultString or ''} {fault.description or ''}".strip()
        if code in _RETRIABLE_FAULTS:
            ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, code, message
            return PagopaRetriableError(message, operation=operation, code=code)
        ex.ko(fault_code=code, error=message)
        kind = (
            PagopaAuthError
            if code in _AUTH_FAULTS
            else PagopaNotFoundError
            if code in _NOT_FOUND_FAULTS
            else PagopaBusinessError
        )
        return kind(message, operation=operation, code=code)

    def _payloads(self, ex: Exchange, *, failed: bool) -> None:
        # The request is small and always useful; an FR answer is big: kept only when something failed.
        if self._capture.sent is not None:
            ex.request = etree.tostring(self._capture.sent)
        if failed and self._capture.received is not None:
            ex.response = etree.tostring(self._capture.received)
        self._capture.sent = self._capture.received = None  # never keep an FR's tree alive past its call
