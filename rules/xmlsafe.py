"""Hardened XML parsing: no DTDs, no entities, no network, bounded size; for every XML the platform reads."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import IO

from lxml import etree

MAX_XML_BYTES = 512 * 1024 * 1024
_DOCTYPE = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)
_PEEK = 64 * 1024


class UnsafeXMLError(ValueError):
    """The document carries a DTD or entity declaration, which the platform never accepts."""


class MalformedXMLError(ValueError):
    """The document is not well-formed XML."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(message if line is None else f"{message} (line {line})")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _check_prolog(head: bytes) -> None:
    if _DOCTYPE.search(head):
        raise UnsafeXMLError("XML with a DOCTYPE or ENTITY declaration is refused")


def _check_doctype(element: etree._Element) -> None:
    if element.getroottree().docinfo.doctype:
        raise UnsafeXMLError("XML with a DOCTYPE declaration is refused")


def parse_xml(data: bytes | str) -> etree._Element:
    """Parse a whole document safely and return its root element."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_XML_BYTES:
        raise MalformedXMLError(f"XML larger than {MAX_XML_BYTES} bytes")
    _check_prolog(data[:_PEEK])
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXMLError(f"malformed XML: {exc.msg}", line=exc.lineno) from exc
    _check_doctype(root)
    return root


class _PeekedStream(io.RawIOBase):
    """A binary stream whose first bytes were read ahead for the prolog check."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        chunk = self._rest.read(len(buffer))
        n = len(chunk)
        buffer[:n] = chunk
        return n


def iterparse_xml(
    stream: IO[bytes], *, tag: str | tuple[str, ...] | None = None, events: tuple[str, ...] = ("end",)
) -> Iterator[tuple[str, etree._Element]]:
    """Stream a document safely, yielding (event, element); callers clear elements they are done with."""
    head = stream.read(_PEEK)
    _check_prolog(head)
    source = io.BufferedReader(_PeekedStream(head, stream))
    parser = etree.iterparse(
        source,
        events=events,
        tag=tag,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    checked = False
    try:
        for event, element in parser:
            if not checked:
                # A DOCTYPE the byte peek cannot see (after 64 KiB of comments, or in UTF-16) is refused here:
                # it was parsed but never used (no DTD loaded, no entity expanded).
                _check_doctype(element)
                checked = True
            yield event, element
    except etree.XMLSyntaxError as exc:
        raise MalformedXMLError(f"malformed XML: {exc.msg}", line=exc.lineno) from exc
    if not checked and parser.root is not None:
        _check_doctype(parser.root)


def local_name(element: etree._Element) -> str:
    """The element's tag without its namespace."""
    return etree.QName(element).localname
