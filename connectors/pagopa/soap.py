"""The zeep client the Node SOAP connectors share (``nodo``: FRs over nodeForPa; ``nodo_rpt``: RPT/RT).

``NodeSoapClient`` builds a strict, hardened zeep client (no DTDs, entities or external references; an
answer larger than a bound is refused before zeep parses it) from the WSDL in the configured specs folder,
on an injected ``requests`` session, with the service address replaced by the configured Node URL. Every
operation goes through ``_call``, which times and journals each attempt (envelopes captured by a plugin),
retries retriable faults with exponential backoff and classifies errors once:

* timeouts, dropped connections, HTTP 5xx/429, cut or garbled answers, SOAP Faults and the Node fault
  ``PPT_SYSTEM_ERROR``: ``PagopaRetriableError``;
* HTTP 401/403 and the Node's authentication faults: ``PagopaAuthError``;
* answers that do not match the WSDL: ``PagopaSchemaError`` (zeep's strict parsing misses a missing last
  element or a wrong type, so a client with ``validate_answers`` also checks each answer's payload against
  the schemas inside its WSDL with lxml, before zeep reads it);
* the client's ``not_found_faults``: ``PagopaNotFoundError``; any other Node fault or HTTP refusal:
  ``PagopaBusinessError`` (a client may refine it in ``_refusal``).

The Node sends its faults inside the answer element (``fault``) with HTTP 200.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import requests
from lxml import etree
from pydantic import SecretStr
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
from connectors.pagopa.retry import RetryPolicy
from models.journal import Outcome, Role
from models.settings import get_settings
from rules.redaction import register_secret

AUTH_FAULTS = frozenset(
    {
        "PPT_AUTENTICAZIONE",
        "PPT_AUTORIZZAZIONE",
        "PPT_STAZIONE_INT_PA_SCONOSCIUTA",
        "PPT_INTERMEDIARIO_PA_SCONOSCIUTO",
        "PPT_STAZIONE_INT_PA_DISABILITATA",
    }
)
RETRIABLE_FAULTS = frozenset({"PPT_SYSTEM_ERROR"})
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_WSDL_NS, _XSD_NS = "http://schemas.xmlsoap.org/wsdl/", "http://www.w3.org/2001/XMLSchema"
_SCHEMA_ERRORS = (
    zeep_errors.ValidationError,
    zeep_errors.XMLParseError,
    zeep_errors.LookupError,
    zeep_errors.DTDForbidden,
    zeep_errors.EntitiesForbidden,
    zeep_errors.ExternalReferenceForbidden,
)


@lru_cache(maxsize=4)
def wsdl_schemas(path: str) -> dict[str, etree.XMLSchema]:
    """The schemas inside a WSDL's types, compiled once per process and keyed by target namespace."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.parse(path, parser).getroot()
    out: dict[str, etree.XMLSchema] = {}
    for schema in root.findall(f"{{{_WSDL_NS}}}types/{{{_XSD_NS}}}schema"):
        # an inline schema borrows prefixes from wsdl:definitions: re-root it with its full namespace map
        standalone = etree.Element(schema.tag, nsmap=dict(schema.nsmap), attrib=dict(schema.attrib))
        standalone.extend(copy.deepcopy(node) for node in schema)
        doc = etree.fromstring(etree.tostring(standalone), parser, base_url=path)
        compiled = etree.XMLSchema(doc)
        out[schema.get("targetNamespace", "")] = compiled
        # a schema that only imports another (nodeForPa.wsdl) validates the imported namespace's elements too
        for imported in schema.findall(f"{{{_XSD_NS}}}import"):
            out.setdefault(imported.get("namespace", ""), compiled)
    return out


class _Capture(Plugin):
    """Keeps the last envelopes sent and received, serialised only when the journal needs them.

    ``check`` sees each envelope received before zeep reads it, and may refuse it by raising.
    """

    def __init__(self, check: Callable[[etree._Element, str], None] | None = None) -> None:
        self.sent: etree._Element | None = None
        self.received: etree._Element | None = None
        self.check = check

    def egress(self, envelope: Any, http_headers: Any, operation: Any, binding_options: Any) -> Any:
        self.sent, self.received = envelope, None
        return envelope, http_headers

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> Any:
        self.received = envelope
        if self.check is not None:
            self.check(envelope, operation.name)
        return envelope, http_headers


class _BoundedTransport(Transport):
    """A zeep transport that refuses answers larger than a bound (before zeep parses them)."""

    def __init__(self, *, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes
        self.last_status: int | None = None

    def post(self, address: str, message: Any, headers: Any) -> requests.Response:
        response = self.session.post(
            address, data=message, headers=headers, timeout=self.operation_timeout, stream=True
        )
        self.last_status = response.status_code
        chunks, size = [], 0
        for chunk in response.iter_content(256 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                response.close()
                raise PagopaSchemaError(f"answer larger than {self.max_bytes} bytes", operation="post")
            chunks.append(chunk)
        response._content = b"".join(chunks)  # noqa: SLF001 - requests' own cache of the body
        return response


def _http_error(exc: zeep_errors.TransportError, operation: str) -> PagopaError:
    status = exc.status_code or 0
    # zeep reports an answer it cannot parse (e.g. cut short) as a TransportError with its status.
    retriable = status >= 500 or status == 429 or status < 300
    kind = (
        PagopaRetriableError
        if retriable
        else PagopaAuthError
        if status in (401, 403)
        else PagopaBusinessError
    )
    return kind(f"HTTP {status}: {exc.message}"[:500], operation=operation, status=status)


class NodeSoapClient:
    """One station's conversation with a Node SOAP service; the requests session is injected (or made)."""

    component: ClassVar[str]
    wsdl: ClassVar[str]
    binding: ClassVar[str]
    max_answer_bytes: ClassVar[int]
    not_found_faults: ClassVar[frozenset[str]] = frozenset()
    # Keep the answer of a successful call too (per journal policy); an FR is big, so ``nodo`` does not.
    journal_answers: ClassVar[bool] = True
    # Check every answer's payload against the schemas inside the WSDL (keyed by its namespace).
    validate_answers: ClassVar[bool] = False

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
        max_answer_bytes: int | None = None,
    ) -> None:
        register_secret(password.get_secret_value())
        self._broker_id, self._station_id, self._password = broker_id, station_id, password
        self._capture = _Capture(self._check_answer if self.validate_answers else None)
        self._transport = transport = _BoundedTransport(
            max_bytes=max_answer_bytes or self.max_answer_bytes,
            session=session,
            timeout=timeout,
            operation_timeout=timeout,
        )
        settings = Settings(
            strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        self._wsdl_path = wsdl = wsdl_path or get_settings().spec_path(self.wsdl)
        self._client = Client(str(wsdl), transport=transport, settings=settings, plugins=[self._capture])
        self._service = self._client.create_service(self.binding, url)
        self._journal = journal or EventJournal()
        self._retry = RetryPolicy(attempts=attempts, backoff=backoff)

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.transport.session.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one call path -------------------------------------------------------------------------------

    def _station_fields(self) -> dict[str, Any]:
        """The fields that authenticate the station in the body of most requests."""
        return {
            "identificativoIntermediarioPA": self._broker_id,
            "identificativoStazioneIntermediarioPA": self._station_id,
            "password": self._password.get_secret_value(),
        }

    def _call(self, operation: str, *, keys: dict[str, Any], retry: bool = True, **fields: Any) -> Any:
        """One operation: journaled per attempt, retried on retriable faults when allowed, classified."""
        policy = self._retry if retry else replace(self._retry, attempts=1)
        return policy.run(
            lambda n: self._attempt(operation, keys=keys | {"attempt": n}, **fields),
            label=f"{self.component} {operation}",
        )

    def _attempt(self, operation: str, *, keys: dict[str, Any], **fields: Any) -> Any:
        with self._journal.exchange(
            component=self.component, operation=operation, role=Role.CLIENT, keys=keys
        ) as ex:
            try:
                answer = getattr(self._service, operation)(**fields)
            except PagopaError:
                self._payloads(ex, failed=True)
                raise
            except requests.Timeout as exc:
                raise PagopaRetriableError(f"timeout: {exc}", operation=operation) from exc
            except requests.RequestException as exc:
                raise PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            except zeep_errors.TransportError as exc:
                ex.http_status, ex.response = exc.status_code, exc.content
                raise _http_error(exc, operation) from exc
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
            except _SCHEMA_ERRORS as exc:
                self._payloads(ex, failed=True)
                raise PagopaSchemaError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            ex.http_status = 200
            fault = getattr(answer, "fault", None)
            self._payloads(ex, failed=fault is not None)
            if fault is not None:
                raise self._fault(ex, operation, fault, answer)
            return answer

    def _check_answer(self, envelope: etree._Element, operation: str) -> None:
        """Refuse (PagopaSchemaError) a 200 answer whose payload the WSDL's schemas do not validate."""
        if self._transport.last_status != 200:
            return  # an HTTP error is classified as such
        body = envelope.find(f"{{{SOAP_ENV}}}Body")
        payload = [e for e in (body if body is not None else ()) if isinstance(e.tag, str)]
        if len(payload) != 1:
            raise PagopaSchemaError(
                f"the answer's Body holds {len(payload)} elements, not 1", operation=operation
            )
        name = etree.QName(payload[0])
        if name.namespace == SOAP_ENV and name.localname == "Fault":
            return  # zeep reads a SOAP Fault
        schema = wsdl_schemas(str(self._wsdl_path)).get(name.namespace or "")
        if schema is None:
            raise PagopaSchemaError(f"unexpected answer element {payload[0].tag}", operation=operation)
        if not schema.validate(payload[0]):  # in place: an FR answer is tens of MB, not copied
            first = next(iter(schema.error_log))
            raise PagopaSchemaError(
                f"answer invalid against {self.wsdl}: line {first.line}: {first.message}", operation=operation
            )

    def _fault(self, ex: Exchange, operation: str, fault: Any, answer: Any) -> PagopaError:
        code = str(fault.faultCode)
        message = f"{code}: {fault.faultString or ''} {fault.description or ''}".strip()
        if code in RETRIABLE_FAULTS:
            ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, code, message
            return PagopaRetriableError(message, operation=operation, code=code)
        ex.ko(fault_code=code, error=message)
        return self._refusal(operation, code=code, message=message, fault=fault, answer=answer)

    def _refusal(self, operation: str, *, code: str, message: str, fault: Any, answer: Any) -> PagopaError:
        """The error of a Node fault that trying again will not fix."""
        kind = (
            PagopaAuthError
            if code in AUTH_FAULTS
            else PagopaNotFoundError
            if code in self.not_found_faults
            else PagopaBusinessError
        )
        return kind(message, operation=operation, code=code)

    def _payloads(self, ex: Exchange, *, failed: bool) -> None:
        # The request is small and always useful; the answer is kept when it failed or the client wants it.
        # Payloads carry tax codes: the journal redacts passwords and keeps payloads per its policy.
        if self._capture.sent is not None:
            ex.request = etree.tostring(self._capture.sent)
        if (failed or self.journal_answers) and self._capture.received is not None:
            ex.response = etree.tostring(self._capture.received)
        self._capture.sent = self._capture.received = None  # never keep an FR's tree alive past its call
