"""The legacy Node SOAP service for ECs (``wsdl/nodeForPa.wsdl``): the FR list and the FR itself, via zeep.

The zeep client, its call path and the classification of faults are ``connectors.pagopa.soap``'s.
The FR travels base64-encoded in one text node; a big flow's node exceeds libxml2's 10 MB default cap, so
``get_flow_xml`` alone lifts that cap (``xml_huge_tree``) while DTDs, entities and external references stay
forbidden and the answer size is bounded by ``max_answer_bytes``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from connectors.pagopa.errors import PagopaSchemaError
from connectors.pagopa.soap import NodeSoapClient

WSDL = "wsdl/nodeForPa.wsdl"
BINDING = "{http://pagopa-api.pagopa.gov.it/node/nodeForPa.xsd}nodeForPaBinding"
MAX_ANSWER_BYTES = 512 * 1024 * 1024


class NodoFlowRef(BaseModel):
    """A flow as the Node's list names it."""

    model_config = ConfigDict(frozen=True)

    id_flusso: str
    flow_at: datetime | None = None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NodoClient(NodeSoapClient):
    """The Node's FR operations for one station; the requests session is injected (or a new one is made)."""

    component = "nodo"
    wsdl = WSDL
    binding = BINDING
    max_answer_bytes = MAX_ANSWER_BYTES
    not_found_faults = frozenset({"PPT_ID_FLUSSO_SCONOSCIUTO"})
    journal_answers = False  # an FR answer is big: kept only when something failed
    validate_answers = True  # checked against nodeForPa.xsd first: zeep alone read an ill-typed answer

    # --- operations --------------------------------------------------------------------------------------

    def list_flows(self, *, ec: str | None = None, psp: str | None = None) -> list[NodoFlowRef]:
        """The flows the Node holds for the EC (or for every EC of the broker), newest revision each."""
        answer = self._call(
            "nodoChiediElencoFlussiRendicontazione",
            keys={"id_dominio": ec, "psp": psp},
            **self._station_fields(),
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
                **self._station_fields(),
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
