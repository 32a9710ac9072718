"""SOAP messages pagoPA sends to the platform (paForNode requests, paaInviaRT with its RT), as templates.

Each template is valid against the official schemas when filled with the default values; tests fill it with
the values they need (hostile ones included) and post it to the station over HTTP.
"""

from __future__ import annotations

import base64

COMUNE, ISTITUTO = "01234567897", "80001234568"

OPERATIONS = (
    "paVerifyPaymentNoticeReq",
    "paGetPaymentReq",
    "paGetPaymentV2Request",
    "paSendRTReq",
    "paSendRTV2Request",
)
RECEIPT = (
    "<receipt><receiptId>{receiptId}</receiptId><noticeNumber>{nav}</noticeNumber><fiscalCode>{idPA}</fiscalCode>"
    "<outcome>{outcome}</outcome><creditorReferenceId>{iuv}</creditorReferenceId>"
    "<paymentAmount>{amount}</paymentAmount><description>{text}</description><companyName>{text}</companyName>"
    "<debtor><uniqueIdentifier><entityUniqueIdentifierType>F</entityUniqueIdentifierType>"
    "<entityUniqueIdentifierValue>RSSMRA80A01H501U</entityUniqueIdentifierValue></uniqueIdentifier>"
    "<fullName>{text}</fullName></debtor><transferList><transfer><idTransfer>{idTransfer}</idTransfer>"
    "<transferAmount>{transferAmount}</transferAmount><fiscalCodePA>{idPA}</fiscalCodePA>"
    "<IBAN>IT21X0306909606000000123456</IBAN><remittanceInformation>{text}</remittanceInformation>"
    "<transferCategory>9/0101108TS/</transferCategory></transfer></transferList><idPSP>BCITITMM</idPSP>"
    "<PSPCompanyName>Banca</PSPCompanyName><idChannel>BCITITMM_01</idChannel>"
    "<channelDescription>app</channelDescription><fee>{fee}</fee><paymentDateTime>{when}</paymentDateTime>"
    "<applicationDate>{day}</applicationDate><transferDate>{day}</transferDate></receipt>"
)
QR = "<qrCode><fiscalCode>{idPA}</fiscalCode><noticeNumber>{nav}</noticeNumber></qrCode>"


def station_envelope(operation: str, values: dict[str, str]) -> bytes:
    head = "<idPA>{idPA}</idPA><idBrokerPA>{idBrokerPA}</idBrokerPA><idStation>{idStation}</idStation>"
    inner = head + (
        RECEIPT
        if operation.startswith("paSendRT")
        else QR + ("<amount>{amount}</amount>" if operation.startswith("paGetPayment") else "")
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:pafn="http://pagopa-api.pagopa.gov.it/pa/paForNode.xsd"><soapenv:Body>'
        f"<pafn:{operation}>{inner.format(**values)}</pafn:{operation}></soapenv:Body></soapenv:Envelope>"
    ).encode()



STATION_VALUES = {
    "idPA": COMUNE,
    "idBrokerPA": "77777777777",
    "idStation": "77777777777_01",
    "nav": "301000000000000144",
    "amount": "25.00",
    "receiptId": "r-1",
    "outcome": "OK",
    "iuv": "01000000000000144",
    "text": "Quota",
    "idTransfer": "1",
    "transferAmount": "25.00",
    "fee": "1.00",
    "when": "2026-01-01T10:00:00",
    "day": "2026-01-01",
}


RT_TEMPLATE = (
    '<?xml version="1.0" encoding="UTF-8"?><pay_i:RT xmlns:pay_i="http://www.digitpa.gov.it/schemas/2011/Pagamenti/">'
    "<pay_i:versioneOggetto>6.2.0</pay_i:versioneOggetto><pay_i:dominio><pay_i:identificativoDominio>{idDominio}"
    "</pay_i:identificativoDominio><pay_i:identificativoStazioneRichiedente>77777777777_02"
    "</pay_i:identificativoStazioneRichiedente></pay_i:dominio><pay_i:identificativoMessaggioRicevuta>{msgId}"
    "</pay_i:identificativoMessaggioRicevuta><pay_i:dataOraMessaggioRicevuta>{when}"
    "</pay_i:dataOraMessaggioRicevuta><pay_i:riferimentoMessaggioRichiesta>RPT-1</pay_i:riferimentoMessaggioRichiesta>"
    "<pay_i:riferimentoDataRichiesta>2026-01-01</pay_i:riferimentoDataRichiesta><pay_i:istitutoAttestante>"
    "<pay_i:identificativoUnivocoAttestante><pay_i:tipoIdentificativoUnivoco>G</pay_i:tipoIdentificativoUnivoco>"
    "<pay_i:codiceIdentificativoUnivoco>BCITITMM</pay_i:codiceIdentificativoUnivoco>"
    "</pay_i:identificativoUnivocoAttestante><pay_i:denominazioneAttestante>{text}</pay_i:denominazioneAttestante>"
    "</pay_i:istitutoAttestante><pay_i:enteBeneficiario><pay_i:identificativoUnivocoBeneficiario>"
    "<pay_i:tipoIdentificativoUnivoco>G</pay_i:tipoIdentificativoUnivoco><pay_i:codiceIdentificativoUnivoco>"
    "{idDominio}</pay_i:codiceIdentificativoUnivoco></pay_i:identificativoUnivocoBeneficiario>"
    "<pay_i:denominazioneBeneficiario>Istituto</pay_i:denominazioneBeneficiario></pay_i:enteBeneficiario>"
    "<pay_i:soggettoPagatore><pay_i:identificativoUnivocoPagatore><pay_i:tipoIdentificativoUnivoco>F"
    "</pay_i:tipoIdentificativoUnivoco><pay_i:codiceIdentificativoUnivoco>RSSMRA80A01H501U"
    "</pay_i:codiceIdentificativoUnivoco></pay_i:identificativoUnivocoPagatore><pay_i:anagraficaPagatore>{text}"
    "</pay_i:anagraficaPagatore></pay_i:soggettoPagatore><pay_i:datiPagamento><pay_i:codiceEsitoPagamento>{esito}"
    "</pay_i:codiceEsitoPagamento><pay_i:importoTotalePagato>{amount}</pay_i:importoTotalePagato>"
    "<pay_i:identificativoUnivocoVersamento>{iuv}</pay_i:identificativoUnivocoVersamento>"
    "<pay_i:CodiceContestoPagamento>{ccp}</pay_i:CodiceContestoPagamento><pay_i:datiSingoloPagamento>"
    "<pay_i:singoloImportoPagato>{single}</pay_i:singoloImportoPagato><pay_i:esitoSingoloPagamento>ESEGUITO"
    "</pay_i:esitoSingoloPagamento><pay_i:dataEsitoSingoloPagamento>{day}</pay_i:dataEsitoSingoloPagamento>"
    "<pay_i:identificativoUnivocoRiscossione>IUR1</pay_i:identificativoUnivocoRiscossione><pay_i:causaleVersamento>"
    "{text}</pay_i:causaleVersamento><pay_i:datiSpecificiRiscossione>9/0101108TS/</pay_i:datiSpecificiRiscossione>"
    "</pay_i:datiSingoloPagamento></pay_i:datiPagamento></pay_i:RT>"
)
INVIA_RT = (
    '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:ppt="http://ws.pagamenti.telematici.gov/" xmlns:ppthead="http://ws.pagamenti.telematici.gov/ppthead">'
    "<soapenv:Header><ppthead:intestazionePPT><identificativoIntermediarioPA>77777777777"
    "</identificativoIntermediarioPA><identificativoStazioneIntermediarioPA>77777777777_02"
    "</identificativoStazioneIntermediarioPA><identificativoDominio>{idDominio}</identificativoDominio>"
    "<identificativoUnivocoVersamento>{iuv}</identificativoUnivocoVersamento><codiceContestoPagamento>{ccp}"
    "</codiceContestoPagamento></ppthead:intestazionePPT></soapenv:Header><soapenv:Body><ppt:paaInviaRT>"
    "<tipoFirma>{tipoFirma}</tipoFirma><rt>{rt}</rt></ppt:paaInviaRT></soapenv:Body></soapenv:Envelope>"
)
RT_VALUES = {
    "idDominio": ISTITUTO,
    "msgId": "RT-1",
    "when": "2026-01-01T10:00:00",
    "text": "Gita",
    "esito": "0",
    "amount": "18.00",
    "iuv": "02260000000000001",
    "ccp": "CCP1",
    "single": "18.00",
    "day": "2026-01-01",
}


def invia_rt_envelope(*, rt: bytes | None = None, **header: str) -> bytes:
    """A paaInviaRT request for station 02 (the Istituto's) carrying ``rt`` (a valid RT by default)."""
    values = {"idDominio": ISTITUTO, "iuv": RT_VALUES["iuv"], "ccp": RT_VALUES["ccp"], "tipoFirma": ""}
    values |= header
    document = rt if rt is not None else RT_TEMPLATE.format(**RT_VALUES).encode()
    return INVIA_RT.format(**values, rt=base64.b64encode(document).decode()).encode()
