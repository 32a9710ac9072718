"""SOAP wire format of the station: hardened envelope parsing, schema validation, answers and faults."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Any

from lxml import etree

from models.settings import get_settings
from rules.xmlsafe import local_name, parse_xml

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PA_FOR_NODE_NS = "http://pagopa-api.pagopa.gov.it/pa/paForNode.xsd"
PA_FOR_NODE_XSD = "wsdl/xsd/paForNode.xsd"


class SoapSyntaxError(ValueError):
    """The request is not a valid SOAP message for this service."""


@lru_cache(maxsize=8)
def schema(relative: str) -> etree.XMLSchema:
    """A compiled official schema (from the configured specs folder), cached per process."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(get_settings().spec_path(relative)), parser))


def schema_errors(element: etree._Element, relative: str = PA_FOR_NODE_XSD) -> list[str]:
    """Schema violations of one payload element (empty when valid)."""
    compiled = schema(relative)
    if compiled.validate(etree.ElementTree(element)):
        return []
    return [f"line {e.line}: {e.message}" for e in compiled.error_log]


def body_payload(data: bytes) -> etree._Element:
    """The single payload element inside a SOAP 1.1 Body."""
    try:
        root = parse_xml(data)
    except ValueError as exc:
        raise SoapSyntaxError(str(exc)) from exc
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise SoapSyntaxError("the root element is not a SOAP 1.1 Envelope")
    body = root.find(f"{{{SOAP_NS}}}Body")
    if body is None:
        raise SoapSyntaxError("the SOAP Envelope has no Body")
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise SoapSyntaxError(f"the SOAP Body holds {len(children)} elements, one expected")
    return children[0]


def envelope(payload: etree._Element) -> bytes:
    """A SOAP 1.1 envelope around one payload element."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soapenv": SOAP_NS})
    etree.SubElement(env, f"{{{SOAP_NS}}}Body").append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def soap_fault(*, code: str, message: str) -> bytes:
    """A SOAP Fault envelope, for requests that cannot be answered in the service's own terms."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soapenv": SOAP_NS})
    fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP_NS}}}Body"), f"{{{SOAP_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"soapenv:{code}"
    etree.SubElement(fault, "faultstring").text = message
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def payload_name(element: etree._Element) -> str:
    """The local name of a payload element."""
    return local_name(element)


def new(name: str) -> etree._Element:
    """A new paForNode payload element (qualified root, unqualified children as the schema wants)."""
    return etree.Element(f"{{{PA_FOR_NODE_NS}}}{name}", nsmap={"pafn": PA_FOR_NODE_NS})


def sub(parent: etree._Element, name: str, text: Any = None) -> etree._Element:
    """Append a child element, with text when given."""
    element = etree.SubElement(parent, name)
    if text is not None:
        element.text = str(text)
    return element


def find(element: etree._Element | None, *path: str) -> etree._Element | None:
    """The first descendant along a path of local names (children are unqualified)."""
    for name in path:
        if element is None:
            return None
        element = next((c for c in element if isinstance(c.tag, str) and local_name(c) == name), None)
    return element


def text(element: etree._Element | None, *path: str) -> str | None:
    """The stripped text at a path, or None."""
    found = find(element, *path)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def amount(value: Decimal) -> str:
    """A SOAP amount: euros with exactly two decimals."""
    return f"{value:.2f}"
