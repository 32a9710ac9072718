"""The legacy Node SOAP service for RPT/RT (``gad/wsdl/NodoPerPa.wsdl``), via zeep in strict mode.

``nodoInviaRPT`` (SOAP header ``intestazionePPT``) and ``nodoInviaCarrelloRPT``
(``intestazioneCarrelloPPT``) hand the RPTs to the Node and answer where to send the debtor;
``nodoChiediStatoRPT`` and ``nodoChiediCopiaRT`` tell what became of an RPT whose RT never arrived.
Every RPT is checked against ``gad/xsd/PagInf_RPT_RT_6_2_0.xsd`` before it leaves, and every RT copy when
it arrives. The WSDL is read from the configured specs folder; its address is replaced by the configured
Node URL.

Sending an RPT is never retried here: after a timeout the Node may hold it, and a second send would be
refused as ``PPT_RPT_DUPLICATA``. The caller records ``RPT_ERRORE_INVIO_A_NODO`` and the recovery asks the
Node later. Faults come inside the answer (HTTP 200) and are classified as in ``connectors.pagopa.nodo``.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from lxml import etree
from pydantic import BaseModel, ConfigDict, SecretStr
from zeep import Client, Settings
from zeep import exceptions as zeep_errors

from connectors.journal import EventJournal, Exchange
from connectors.pagopa.errors import (
    PagopaAuthError,
    PagopaBusinessError,
    PagopaError,
    PagopaNotFoundError,
    PagopaRetriableError,
    PagopaSchemaError,
)
from connectors.pagopa.nodo import _BoundedTransport, _Capture
from models.journal import Outcome, Role
from models.settings import get_settings
from rules.redaction import register_secret
from rules.rpt import RPT_XSD, schema_errors

log = logging.getLogger(__name__)

COMPONENT = "nodo_rpt"
WSDL = "gad/wsdl/NodoPerPa.wsdl"
BINDING = (
    "{http://NodoPagamentiSPC.spcoop.gov.it/servizi/PagamentiTelematiciRPT}PagamentiTelematiciRPTbinding"
)
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# The EC no longer picks the PSP (the debtor does, on pagoPA's pages): the request still names one.
# Configurable; these are the values AgID's own PSP entry is known by.
WISP_PSP = "AGID_01"
WISP_PSP_BROKER = "97735020584"
WISP_CHANNEL = "97735020584_02"
_AUTH_FAULTS = frozenset(
    {
        "PPT_AUTENTICAZIONE",
        "PPT_AUTORIZZAZIONE",
        "PPT_STAZIONE_INT_PA_SCONOSCIUTA",
        "PPT_INTERMEDIARIO_PA_SCONOSCIUTO",
        "PPT_STAZIONE_INT_PA_DISABILITATA",
    }
)
_NOT_FOUND_FAULTS = frozenset({"PPT_RPT_SCONOSCIUTA", "PPT_RT_NONDISPONIBILE"})
_RETRIABLE_FAULTS = frozenset({"PPT_SYSTEM_ERROR"})


@lru_cache(maxsize=1)
def rpt_rt_schema() -> etree.XMLSchema:
    """The RPT/RT schema (gad/xsd/PagInf_RPT_RT_6_2_0.xsd), compiled once per process."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(get_settings().spec_path(RPT_XSD)), parser))


def rpt_rt_errors(xml: bytes) -> list[str]:
    """Violations of the RPT/RT schema (empty when valid); ValueError when the XML is unreadable."""
    return schema_errors(xml, rpt_rt_schema())


class RptToSend(BaseModel):
    """One RPT: its keys and its XML document."""

    model_config = ConfigDict(frozen=True)

    id_dominio: str
    iuv: str
    ccp: str
    xml: bytes


class RptFault(BaseModel):
    """A fault the Node answered, for one RPT of a cart (``serial``, from 1) or for the whole request."""

    model_config = ConfigDict(frozen=True)

    code: str
    description: str | None = None
    serial: int | None = None


class RptRefusedError(PagopaBusinessError):
    """The Node refused the RPT or the cart; ``faults`` lists what it said (per RPT for a cart)."""

    def __init__(self, message: str, *, operation: str, code: str | None, faults: list[RptFault]) -> None:
        super().__init__(message, operation=operation, code=code)
        self.faults = faults


class RptAccepted(BaseModel):
    """The Node took the RPT(s): where the debtor pays, and the Node's session (``idSession`` of the URL)."""

    model_config = ConfigDict(frozen=True)

    url: str | None
    session_id: str | None


class RptStatus(BaseModel):
    """What nodoChiediStatoRPT says of an RPT."""

    model_config = ConfigDict(frozen=True)

    state: str
    url: str | None = None
    history: list[tuple[str, str]] = []  # (state, description), oldest first


def _session_of(url: str | None) -> str | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("idSession") or parse_qs(urlsplit(url).query).get("idSessione")
    return values[0] if values else None


class NodoRptClient:
    """The Node's RPT/RT operations for one station; the requests session is injected (or made)."""

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
        psp_id: str = WISP_PSP,
        psp_broker_id: str = WISP_PSP_BROKER,
        channel_id: str = WISP_CHANNEL,
    ) -> None:
        register_secret(password.get_secret_value())
        self._broker_id, self._station_id, self._password = broker_id, station_id, password
        self._psp = {
            "identificativoPSP": psp_id,
            "identificativoIntermediarioPSP": psp_broker_id,
            "identificativoCanale": channel_id,
        }
        self._capture = _Capture()
        transport = _BoundedTransport(
            max_bytes=MAX_ANSWER_BYTES, session=session, timeout=timeout, operation_timeout=timeout
        )
        settings = Settings(
            strict=True, xml_huge_tree=False, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        wsdl = wsdl_path or get_settings().spec_path(WSDL)
        self._client = Client(str(wsdl), transport=transport, settings=settings, plugins=[self._capture])
        self._service = self._client.create_service(BINDING, url)
        self._journal = journal or EventJournal()
        self._attempts, self._backoff = max(1, attempts), backoff

    def close(self) -> None:
        """Close the HTTP session."""
        self._client.transport.session.close()

    def __enter__(self) -> NodoRptClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations --------------------------------------------------------------------------------------

    def send_rpt(self, rpt: RptToSend) -> RptAccepted:
        """nodoInviaRPT: one RPT; RptRefusedError when the Node refuses it."""
        self._check(rpt, operation="nodoInviaRPT")
        header = {
            "identificativoIntermediarioPA": self._broker_id,
            "identificativoStazioneIntermediarioPA": self._station_id,
            "identificativoDominio": rpt.id_dominio,
            "identificativoUnivocoVersamento": rpt.iuv,
            "codiceContestoPagamento": rpt.ccp,
        }
        answer = self._call(
            "nodoInviaRPT",
            keys={"id_dominio": rpt.id_dominio, "iuv": rpt.iuv, "ccp": rpt.ccp},
            retry=False,
            password=self._password.get_secret_value(),
            **self._psp,
            rpt=rpt.xml,
            _soapheaders={"header": header},
        )
        if answer.esito != "OK":
            raise RptRefusedError(
                "nodoInviaRPT answered KO without a fault", operation="nodoInviaRPT", code=None, faults=[]
            )
        return RptAccepted(url=answer.url, session_id=_session_of(answer.url))

    def send_cart(
        self, *, cart_id: str, rpts: list[RptToSend], multi_beneficiary: bool = False
    ) -> RptAccepted:
        """nodoInviaCarrelloRPT: 1 to 5 RPTs in one cart; RptRefusedError (a fault per RPT) on refusal."""
        if not 1 <= len(rpts) <= 5:
            raise PagopaSchemaError(
                f"a cart holds 1 to 5 RPTs, not {len(rpts)}", operation="nodoInviaCarrelloRPT"
            )
        for rpt in rpts:
            self._check(rpt, operation="nodoInviaCarrelloRPT")
        header = {
            "identificativoIntermediarioPA": self._broker_id,
            "identificativoStazioneIntermediarioPA": self._station_id,
            "identificativoCarrello": cart_id,
        }
        lista = {
            "elementoListaRPT": [
                {
                    "identificativoDominio": r.id_dominio,
                    "identificativoUnivocoVersamento": r.iuv,
                    "codiceContestoPagamento": r.ccp,
                    "rpt": r.xml,
                }
                for r in rpts
            ]
        }
        extra = {"multiBeneficiario": True} if multi_beneficiary else {}
        answer = self._call(
            "nodoInviaCarrelloRPT",
            keys={
                "id_dominio": rpts[0].id_dominio,
                "iuv": rpts[0].iuv,
                "cart_id": cart_id,
                "rpts": len(rpts),
            },
            retry=False,
            password=self._password.get_secret_value(),
            **self._psp,
            listaRPT=lista,
            _soapheaders={"header": header},
            **extra,
        )
        if answer.esitoComplessivoOperazione != "OK":
            raise RptRefusedError(
                "nodoInviaCarrelloRPT answered KO without a fault",
                operation="nodoInviaCarrelloRPT",
                code=None,
                faults=[],
            )
        return RptAccepted(url=answer.url, session_id=_session_of(answer.url))

    def get_status(self, *, id_dominio: str, iuv: str, ccp: str) -> RptStatus:
        """nodoChiediStatoRPT: the Node's state of an RPT (PagopaNotFoundError when it never got it)."""
        answer = self._call(
            "nodoChiediStatoRPT",
            keys={"id_dominio": id_dominio, "iuv": iuv, "ccp": ccp},
            **self._station_fields(),
            identificativoDominio=id_dominio,
            identificativoUnivocoVersamento=iuv,
            codiceContestoPagamento=ccp,
        )
        esito = answer.esito
        if esito is None or not esito.stato:
            raise PagopaSchemaError("answer without esito/stato", operation="nodoChiediStatoRPT")
        history = [(h.stato, h.descrizione or "") for h in (esito.elementoStoricoRPT or []) if h is not None]
        return RptStatus(state=esito.stato, url=esito.url or None, history=history)

    def get_rt_copy(self, *, id_dominio: str, iuv: str, ccp: str) -> bytes:
        """nodoChiediCopiaRT: the RT document, schema-checked (PagopaNotFoundError when none yet)."""
        answer = self._call(
            "nodoChiediCopiaRT",
            keys={"id_dominio": id_dominio, "iuv": iuv, "ccp": ccp},
            **self._station_fields(),
            identificativoDominio=id_dominio,
            identificativoUnivocoVersamento=iuv,
            codiceContestoPagamento=ccp,
        )
        if not answer.rt:
            raise PagopaSchemaError("answer without rt", operation="nodoChiediCopiaRT")
        xml = bytes(answer.rt)
        try:
            errors = rpt_rt_errors(xml)
        except ValueError as exc:
            raise PagopaSchemaError(
                f"the RT is not readable XML: {exc}", operation="nodoChiediCopiaRT"
            ) from exc
        if errors:
            raise PagopaSchemaError(
                f"the RT is invalid against {RPT_XSD}: {errors[0]}", operation="nodoChiediCopiaRT"
            )
        return xml

    # --- the one call path -------------------------------------------------------------------------------

    def _station_fields(self) -> dict[str, Any]:
        return {
            "identificativoIntermediarioPA": self._broker_id,
            "identificativoStazioneIntermediarioPA": self._station_id,
            "password": self._password.get_secret_value(),
        }

    @staticmethod
    def _check(rpt: RptToSend, *, operation: str) -> None:
        try:
            errors = rpt_rt_errors(rpt.xml)
        except ValueError as exc:
            raise PagopaSchemaError(f"RPT {rpt.iuv} is not readable XML: {exc}", operation=operation) from exc
        if errors:
            raise PagopaSchemaError(
                f"RPT {rpt.iuv} is invalid against {RPT_XSD}: {errors[0]}", operation=operation
            )

    def _call(self, operation: str, *, keys: dict[str, Any], retry: bool = True, **fields: Any) -> Any:
        """One operation: journaled per attempt, retried on retriable faults when allowed, classified."""
        attempts = self._attempts if retry else 1
        delay = self._backoff
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(operation, keys=keys | {"attempt": attempt}, **fields)
            except PagopaError as exc:
                if not exc.retriable or attempt == attempts:
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
                answer = getattr(self._service, operation)(**fields)
            except PagopaError:
                self._payloads(ex)
                raise
            except requests.Timeout as exc:
                raise PagopaRetriableError(f"timeout: {exc}", operation=operation) from exc
            except requests.RequestException as exc:
                raise PagopaRetriableError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            except zeep_errors.TransportError as exc:
                ex.http_status, ex.response = exc.status_code, exc.content
                kind = (
                    PagopaRetriableError
                    if exc.status_code >= 500 or exc.status_code == 429
                    else PagopaAuthError
                    if exc.status_code in (401, 403)
                    else PagopaBusinessError
                )
                raise kind(f"HTTP {exc.status_code}", operation=operation, status=exc.status_code) from exc
            except zeep_errors.XMLSyntaxError as exc:
                ex.response = exc.content
                raise PagopaRetriableError(
                    f"answer is not well-formed XML: {exc}", operation=operation
                ) from exc
            except zeep_errors.Fault as exc:
                self._payloads(ex)
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
                self._payloads(ex)
                raise PagopaSchemaError(f"{type(exc).__name__}: {exc}", operation=operation) from exc
            ex.http_status = 200
            self._payloads(ex)
            fault = getattr(answer, "fault", None)
            if fault is not None:
                raise self._fault(ex, operation, fault, answer)
            return answer

    def _fault(self, ex: Exchange, operation: str, fault: Any, answer: Any) -> PagopaError:
        code = str(fault.faultCode)
        message = f"{code}: {fault.faultString or ''} {fault.description or ''}".strip()
        if code in _RETRIABLE_FAULTS:
            ex.outcome, ex.fault_code, ex.error = Outcome.FAIL, code, message
            return PagopaRetriableError(message, operation=operation, code=code)
        ex.ko(fault_code=code, error=message)
        if operation in ("nodoInviaRPT", "nodoInviaCarrelloRPT"):
            listed = getattr(answer, "listaErroriRPT", None)
            faults = [
                RptFault(code=str(f.faultCode), description=f.description, serial=f.serial)
                for f in (listed.fault if listed is not None and listed.fault else [])
                if f is not None
            ]
            faults = faults or [RptFault(code=code, description=fault.description, serial=fault.serial)]
            if code not in _AUTH_FAULTS:
                return RptRefusedError(message, operation=operation, code=code, faults=faults)
        kind = (
            PagopaAuthError
            if code in _AUTH_FAULTS
            else PagopaNotFoundError
            if code in _NOT_FOUND_FAULTS
            else PagopaBusinessError
        )
        return kind(message, operation=operation, code=code)

    def _payloads(self, ex: Exchange) -> None:
        # RPTs and RTs carry tax codes: the journal redacts passwords and keeps payloads per its policy
        if self._capture.sent is not None:
            ex.request = etree.tostring(self._capture.sent)
        if self._capture.received is not None:
            ex.response = etree.tostring(self._capture.received)
