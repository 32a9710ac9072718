"""The zeep client the Node SOAP connectors share (``nodo``: FRs over nodeForPa; ``nodo_rpt``: RPT/RT).

``NodeSoapClient`` builds a strict, hardened zeep client (no DTDs, entities or external references; an
answer larger than a bound is refused before zeep parses it) from the WSDL in the configured specs folder,
on an injected ``requests`` session, with the service address replaced by the configured Node URL. Every
operation goes through ``_call``, which times and journals each attempt (envelopes captured by a plugin),
retries retriable faults with exponential backoff and classifies errors once:

* timeouts, dropped connections, HTTP 5xx/429, cut or garbled answers, SOAP Faults and the Node fault
  ``PPT_SYSTEM_ERROR``: ``PagopaRetriableError``;
* HTTP 401/403 and the Node's authentication faults: ``PagopaAuthError``;
* answers that do not match the WSDL: ``PagopaSchemaError``;
* the client's ``not_found_faults``: ``PagopaNotFoundError``; any other Node fault or HTTP refusal:
  ``PagopaBusinessError`` (a client may refine it in ``_refusal``).

The Node sends its faults inside the answer element (``fault``) with HTTP 200.
"""

from __future__ import annotations

from dataclasses import replace
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
_SCHEMA_ERRORS = (
    zeep_errors.ValidationError,
    zeep_errors.XMLParseError,
    zeep_errors.LookupError,
    zeep_errors.DTDForbidden,
    zeep_errors.EntitiesForbidden,
    zeep_errors.ExternalReferenceForbidden,
)


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
        self._capture = _Capture()
        transport = _BoundedTransport(
            max_bytes=max_answer_bytes or self.max_answer_bytes,
            session=session,
            timeout=timeout,
            operation_timeout=timeout,
        )
        settings = Settings(
            strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        wsdl = wsdl_path or get_settings().spec_path(self.wsdl)
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
