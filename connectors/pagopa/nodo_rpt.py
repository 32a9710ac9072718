"""The legacy Node SOAP service for RPT/RT (``gad/wsdl/NodoPerPa.wsdl``), via zeep in strict mode.

``nodoInviaRPT`` (SOAP header ``intestazionePPT``) and ``nodoInviaCarrelloRPT``
(``intestazioneCarrelloPPT``) hand the RPTs to the Node and answer where to send the debtor;
``nodoChiediStatoRPT`` and ``nodoChiediCopiaRT`` tell what became of an RPT whose RT never arrived.
Every RPT is checked against ``gad/xsd/PagInf_RPT_RT_6_2_0.xsd`` before it leaves, every answer against the
WSDL's own schemas (``validate_answers``) and every RT copy when it arrives. The zeep client and its call path
are ``connectors.pagopa.soap``'s. A send whose answer is unreadable or invalid is not a refusal: the Node may
hold the RPT, so the caller records it like a timeout.

Sending an RPT is never retried here: after a timeout the Node may hold it, and a second send would be
refused as ``PPT_RPT_DUPLICATA``. The caller records ``RPT_ERRORE_INVIO_A_NODO`` and the recovery asks the
Node later. Faults come inside the answer (HTTP 200); a refused RPT or cart is ``RptRefusedError``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lxml import etree
from pydantic import BaseModel, ConfigDict

from connectors.pagopa.errors import PagopaBusinessError, PagopaError, PagopaSchemaError
from connectors.pagopa.soap import AUTH_FAULTS, NodeSoapClient
from models.settings import get_settings
from rules.rpt import RPT_XSD, schema_errors

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
_SENDS = frozenset({"nodoInviaRPT", "nodoInviaCarrelloRPT"})


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


class NodoRptClient(NodeSoapClient):
    """The Node's RPT/RT operations for one station; the requests session is injected (or made)."""

    component = "nodo_rpt"
    wsdl = WSDL
    binding = BINDING
    max_answer_bytes = MAX_ANSWER_BYTES
    not_found_faults = frozenset({"PPT_RPT_SCONOSCIUTA", "PPT_RT_NONDISPONIBILE"})
    validate_answers = True

    def __init__(
        self,
        *,
        psp_id: str = WISP_PSP,
        psp_broker_id: str = WISP_PSP_BROKER,
        channel_id: str = WISP_CHANNEL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._psp = {
            "identificativoPSP": psp_id,
            "identificativoIntermediarioPSP": psp_broker_id,
            "identificativoCanale": channel_id,
        }

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
        answer = self._ask("nodoChiediStatoRPT", id_dominio=id_dominio, iuv=iuv, ccp=ccp)
        esito = answer.esito
        if esito is None or not esito.stato:
            raise PagopaSchemaError("answer without esito/stato", operation="nodoChiediStatoRPT")
        history = [(h.stato, h.descrizione or "") for h in (esito.elementoStoricoRPT or []) if h is not None]
        return RptStatus(state=esito.stato, url=esito.url or None, history=history)

    def get_rt_copy(self, *, id_dominio: str, iuv: str, ccp: str) -> bytes:
        """nodoChiediCopiaRT: the RT document, schema-checked (PagopaNotFoundError when none yet)."""
        answer = self._ask("nodoChiediCopiaRT", id_dominio=id_dominio, iuv=iuv, ccp=ccp)
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

    # --- checks and refusals ------------------------------------------------------------------------------

    def _ask(self, operation: str, *, id_dominio: str, iuv: str, ccp: str) -> Any:
        """A question about one RPT (nodoChiediStatoRPT, nodoChiediCopiaRT), asked as the station."""
        return self._call(
            operation,
            keys={"id_dominio": id_dominio, "iuv": iuv, "ccp": ccp},
            **self._station_fields(),
            identificativoDominio=id_dominio,
            identificativoUnivocoVersamento=iuv,
            codiceContestoPagamento=ccp,
        )

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

    def _refusal(self, operation: str, *, code: str, message: str, fault: Any, answer: Any) -> PagopaError:
        """A refused send lists its faults (one per RPT of a cart); other refusals as for every client."""
        if operation not in _SENDS or code in AUTH_FAULTS:
            return super()._refusal(operation, code=code, message=message, fault=fault, answer=answer)
        listed = getattr(answer, "listaErroriRPT", None)
        faults = [
            RptFault(code=str(f.faultCode), description=f.description, serial=f.serial)
            for f in (listed.fault if listed is not None and listed.fault else [])
            if f is not None
        ]
        faults = faults or [RptFault(code=code, description=fault.description, serial=fault.serial)]
        return RptRefusedError(message, operation=operation, code=code, faults=faults)
