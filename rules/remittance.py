"""Read the flow id (IUF) or the IUV that a treasury movement's causale names, despite what banks do to it.

Recognised families (DOMAIN §3 and §9):

- ``/PUR/LGPE-RIVERSAMENTO/URI/<idFlusso>`` (SACI 1.x) and ``/PUR/LGPE-RIVERSAMENTO/TXT/<n>/URI/<idFlusso>``
  (SACI >= 2.0) → kind ``"flow"``. ``integrative`` is the transfer number: ``0`` is the ordinary transfer
  (also for the SACI 1.x form, which has no number), ``1``–``9`` the integrative transfers of the same flow.
- ``/RFB/<IUV>/<amount>`` and ``/RFS/<RF reference>/<amount>`` → kind ``"iuv"`` (an RF reference printed in
  groups of four is returned without the spaces, upper-cased).
- A pagoPA marker whose id is cut, missing or unusable → ``"truncated"``; no marker → ``"none"``.

Damage survived: bank containers around the causale (``/ZZ2…/ZZ3…``, ``:RI3:`` tags, concatenated CBI 63
records), spaces instead of slashes, spaces inside the marker words and inside the date of the id, any letter
case, hard line wraps (a line break is a wrap: it is removed, never read as a separator), and truncation.
A flow id is returned exactly as found (case included: reconciliation compares ids case-insensitively).

The parser never guesses: an id that runs to the last character of a text whose length is a field width at
which treasuries cut (``TRUNCATION_WIDTHS``) is reported ``"truncated"``, as is an id longer than 35
characters or one that ends on a separator; two different complete flow ids in one text give ``"none"``.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Literal

RemittanceKind = Literal["flow", "iuv", "truncated", "none"]

MAX_FLOW_ID_LENGTH = 35
MAX_IUV_LENGTH = 35

# Field widths at which treasuries cut a causale: the CBI 63 record's 104 characters, SEPA remittance and
# SWIFT 4x35 (140), SWIFT 6x65 (390), common database columns. Shorter widths are left out on purpose: a
# causale with a short bank prefix is that long, so an id ending there is the normal case, not a cut.
TRUNCATION_WIDTHS = frozenset({104, 120, 128, 140, 250, 255, 256, 390, 500, 512})

_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@dataclass(frozen=True, slots=True)
class RemittanceRef:
    """What a causale names: a flow id, an IUV or RF reference, a cut reference, or nothing."""

    kind: RemittanceKind
    reference: str | None = None
    integrative: int | None = None

    def to_dict(self) -> dict[str, str | int | None]:
        """The JSON shape printed by the CLI: exactly kind, reference and integrative."""
        return {"kind": self.kind, "reference": self.reference, "integrative": self.integrative}


_NONE = RemittanceRef(kind="none")


def _spaced(word: str) -> str:
    """A marker word that tolerates spaces between its letters (soft wraps turned into blanks)."""
    return "[ ]*".join(re.escape(letter) for letter in word)


_FLOW_MARKER = re.compile(
    _spaced("LGPE")
    + r"[ \-_/]*"
    + _spaced("RIVERSAMENTO")
    + r"(?P<txt>[ /]*"
    + _spaced("TXT")
    + r"[ /]*(?P<n>\d{1,2})?)?"
    + r"[ /]*"
    + _spaced("URI")
    + r"[ /:]*",
    re.IGNORECASE,
)
_BARE_URI = re.compile(r"/[ ]*URI[ ]*/[ ]*", re.IGNORECASE)
_DATE = re.compile(r"(\d)[ ]*(\d)[ ]*(\d)[ ]*(\d)[ ]*-[ ]*(\d)[ ]*(\d)[ ]*-[ ]*(\d)[ ]*(\d)[ ]*")
_PARTIAL_DATE = re.compile(r"\d{1,4}|\d{4}-\d{0,2}|\d{4}-\d{2}-\d?")
_DATE_CHARS = re.compile(r"[ 0-9\-]*")
_ID_CHARS = re.compile(r"[A-Za-z0-9_\-]*")
_CANONICAL_FLOW_ID = re.compile(r"\d{4}-\d{2}-\d{2}[A-Za-z0-9_]+-[A-Za-z0-9_\-]*[A-Za-z0-9]")
# A bank container tag glued to the id, as in concatenated CBI 63 records ("/ZZ3…", "/RI1…") or ":RI3:".
_CONTAINER_TAG = re.compile(r"(?:/(?:ZZ\d|RI\d|ID\d|YY[Y\d]|KKK)|:[A-Z]{2}\d:)[A-Za-z0-9_]", re.IGNORECASE)
_RFB = re.compile(r"(?<![A-Za-z0-9])" + _spaced("RFB") + r"[ /:]+", re.IGNORECASE)
_RFS = re.compile(r"(?<![A-Za-z0-9])" + _spaced("RFS") + r"[ /:]+", re.IGNORECASE)
_IUV_CHARS = re.compile(r"[A-Za-z0-9]*")
_RF_RAW = re.compile(r"R[ ]*F[ ]*\d[ ]*\d(?:[ ]*[A-Za-z0-9])*", re.IGNORECASE)
_RF_SHAPE = re.compile(r"RF\d{2}[A-Z0-9]{1,21}")
_RF_MAX_LENGTH = 25  # "RF", two check digits and at most 21 characters
_MARKER_TAILS = ("PURLGPERIVERSAMENTO", "LGPERIVERSAMENTO")


class _Text:
    """The causale with line breaks removed (they are wraps) and every other blank turned into a space."""

    def __init__(self, raw: str) -> None:
        chars: list[str] = []
        breaks: list[int] = []
        for char in raw:
            if char in _LINE_BREAKS:
                breaks.append(len(chars))
            elif char.isspace():
                chars.append(" ")
            else:
                chars.append(char)
        self.s = "".join(chars)
        self.breaks = breaks
        self.end = len(self.s.rstrip())
        stripped_raw = raw.rstrip()
        self.lengths = {self.end, len(stripped_raw)}

    def cut_at(self, position: int) -> bool:
        """True when an id ending at ``position`` ends where a treasury field may have been cut."""
        return position >= self.end and not self.lengths.isdisjoint(TRUNCATION_WIDTHS)


def _read_flow_id(text: _Text, start: int, *, strict: bool) -> tuple[str, str | None]:
    """Read the id after a URI marker: ("ok", id), ("truncated", None) or ("none", None) when ``strict``."""
    s = text.s
    if start >= text.end:
        return ("truncated", None)
    date = _DATE.match(s, start)
    if date:
        digits = "".join(date.groups())
        head = f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
        token_start = date.end()
    else:
        # Only a text ending in date characters can end in a partial date; matching them first keeps the
        # work per marker to the characters after it that could belong to a date (linear over all markers).
        tail = _DATE_CHARS.match(s, start)
        assert tail is not None  # the pattern matches the empty string
        if tail.end() >= text.end and _PARTIAL_DATE.fullmatch(s[start : text.end].replace(" ", "")):
            return ("truncated", None)
        if strict:
            return ("none", None)
        head = ""
        token_start = start
    token = _ID_CHARS.match(s, token_start)
    assert token is not None  # the pattern matches the empty string
    end = token.end()
    flow_id = head + token.group()
    if len(flow_id) > MAX_FLOW_ID_LENGTH:
        # A wrap (removed line break) may have glued the next word to the id: cut at the last break
        # that leaves an id of legal length, the only place a separator can have been.
        # text.breaks is sorted: the last break inside the token that leaves an id of legal length
        limit = min(end - 1, token_start + MAX_FLOW_ID_LENGTH - len(head))
        index = bisect_right(text.breaks, limit) - 1
        if index < 0 or text.breaks[index] <= token_start:
            return ("truncated", None)
        end = text.breaks[index]
        flow_id = head + s[token_start:end]
    canonical = _CANONICAL_FLOW_ID.fullmatch(flow_id) is not None
    if strict and not canonical:
        return ("none", None)
    if not flow_id or flow_id[-1] in "-_" or (head and len(flow_id) == len(head)):
        return ("truncated", None)
    if text.cut_at(end):
        return ("truncated", None)
    if not canonical and _CONTAINER_TAG.match(s, end):
        return ("truncated", None)
    return ("ok", flow_id)


def _flow_refs(text: _Text) -> RemittanceRef | None:
    """The flow named by LGPE-RIVERSAMENTO markers, or by a bare /URI/ before a canonical id."""
    found: list[tuple[str, int | None]] = []
    cut: list[int | None] = []
    markers = list(_FLOW_MARKER.finditer(text.s))
    strict = not markers
    if strict:
        markers = list(_BARE_URI.finditer(text.s))
    for marker in markers:
        integrative: int | None = 0
        if not strict and marker.group("txt") is not None:
            number = marker.group("n")
            integrative = int(number) if number is not None and len(number) == 1 else None
        status, flow_id = _read_flow_id(text, marker.end(), strict=strict)
        if status == "ok" and flow_id is not None:
            found.append((flow_id, integrative))
        elif status == "truncated":
            cut.append(integrative)
    if found:
        if len({flow_id.casefold() for flow_id, _ in found}) > 1:
            return _NONE
        flow_id, integrative = found[0]
        return RemittanceRef(kind="flow", reference=flow_id, integrative=integrative)
    if cut:
        return RemittanceRef(kind="truncated", integrative=cut[0])
    if not strict:
        # A marker with no usable id after it is still a pagoPA transfer whose reference is lost.
        return RemittanceRef(kind="truncated")
    return None


def _rf_is_valid(reference: str) -> bool:
    """ISO 11649 check: the reference with 'RF' + check digits moved to the end is 1 mod 97."""
    if not _RF_SHAPE.fullmatch(reference):
        return False
    rearranged = reference[4:] + reference[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _iuv_refs(text: _Text) -> RemittanceRef | None:
    """The IUV of /RFB/ or the RF reference of /RFS/."""
    s = text.s
    for marker in _RFB.finditer(s):
        token = _IUV_CHARS.match(s, marker.end())
        assert token is not None
        iuv = token.group()
        if not iuv or len(iuv) > MAX_IUV_LENGTH or text.cut_at(token.end()):
            return RemittanceRef(kind="truncated")
        return RemittanceRef(kind="iuv", reference=iuv)
    for marker in _RFS.finditer(s):
        raw = _RF_RAW.match(s, marker.end())
        if raw is None:
            at_end = marker.end() >= text.end or not s[marker.end() : text.end].strip()
            return RemittanceRef(kind="truncated") if at_end else _NONE
        chunks = raw.group().split(" ")
        # Groups of four may be followed by the amount when spaces replaced the slashes: the check
        # digits tell where the reference ends. A reference has at most 25 characters, so only the
        # chunks that fit in 25 characters are tried (a long run of short chunks must not cost n²).
        lengths = [0]
        for chunk in chunks:
            if lengths[-1] > _RF_MAX_LENGTH:
                break
            lengths.append(lengths[-1] + len(chunk))
        fits = bisect_left(lengths, _RF_MAX_LENGTH + 1) - 1
        for count in range(fits, 0, -1):
            candidate = "".join(chunks[:count]).upper()
            if _rf_is_valid(candidate):
                if count == len(chunks) and text.cut_at(raw.end()):
                    return RemittanceRef(kind="truncated")
                return RemittanceRef(kind="iuv", reference=candidate)
        whole = "".join(chunks).upper()
        if raw.end() >= text.end:
            return RemittanceRef(kind="truncated")
        if s[raw.end() :].lstrip().startswith("/") and _RF_SHAPE.fullmatch(whole):
            return RemittanceRef(kind="iuv", reference=whole)
        return _NONE
    return None


def _ends_in_marker(text: _Text) -> bool:
    """True when the text stops inside a flow marker (e.g. '.../PUR/LGPE-RIVERS')."""
    tail = text.s[: text.end][-40:]
    upper = tail.upper()
    for word in ("PUR", "LGPE"):
        index = upper.rfind(word)
        while index >= 0:
            if index == 0 or not upper[index - 1].isalnum():
                compact = re.sub(r"[ /\-_:]", "", upper[index:])
                for full in _MARKER_TAILS:
                    if full.startswith(compact):
                        return True
                    if compact.startswith(full):
                        rest = compact[len(full) :]
                        if re.fullmatch(r"(?:T(?:X(?:T\d{0,2})?)?)?(?:U(?:R(?:I)?)?)?", rest):
                            return True
            index = upper.rfind(word, 0, index)
    return False


def parse_remittance(text: str) -> RemittanceRef:
    """Extract the flow id or IUV named by a movement's causale; never raises, never guesses a cut id."""
    if not text:
        return _NONE
    normalised = _Text(text)
    flow = _flow_refs(normalised)
    if flow is not None:
        return flow
    iuv = _iuv_refs(normalised)
    if iuv is not None:
        return iuv
    if _ends_in_marker(normalised):
        return RemittanceRef(kind="truncated")
    return _NONE
