"""Payment notice PDFs (avviso di pagamento): typed context in, PDF bytes out, after the pagoPA v3 layout."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import segno
from PIL import Image
from reportlab import rl_config
from reportlab.lib.colors import Color, white
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from rules.identifiers import format_nav, nav_to_iuv, parse_nav, qr_payload, validate_ec_fiscal_code

# The layout is drawn with reportlab's canvas rather than a Jinja template: a PDF has no markup to
# template. The same split holds: a frozen typed context, one pure render function, and the words in
# a per-language table below, with no decisions taken while drawing.

logger = logging.getLogger(__name__)

__all__ = [
    "NoticeContext",
    "NoticeCreditor",
    "NoticeDebtor",
    "NoticeOption",
    "datamatrix_modules",
    "format_amount",
    "format_due_date",
    "poste_datamatrix_payload",
    "render_notice_pdf",
    "render_notices_pdf",
]

_CENT = Decimal("0.01")
_MAX_AMOUNT = Decimal("999999999.99")
_DIGITS = re.compile(r"[0-9]+")

# --- context ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoticeCreditor:
    """The creditor body (Ente Creditore) as printed on its notices."""

    fiscal_code: str
    name: str
    sector: str | None = None
    info: str | None = None
    cbill: str | None = None
    logo_path: str | None = None
    postal_account: str | None = None
    postal_authorisation: str | None = None

    def __post_init__(self) -> None:
        # The fiscal code goes into the QR code and the data matrix; its checksum only warns (DOMAIN §3).
        validate_ec_fiscal_code(self.fiscal_code)


@dataclass(frozen=True)
class NoticeDebtor:
    """The debtor the notice is addressed to (Destinatario dell'avviso)."""

    fiscal_code: str
    name: str
    address: str | None = None


@dataclass(frozen=True)
class NoticeOption:
    """One payable option of a notice: the single payment (instalment None) or one instalment."""

    nav: str
    iuv: str
    amount: Decimal
    due_date: date | None
    instalment: int | None = None
    postal: bool = False

    def __post_init__(self) -> None:
        parsed = parse_nav(self.nav)
        if not parsed.check_digits_ok:
            raise ValueError(f"nav: check digits do not verify: {self.nav!r}")
        if nav_to_iuv(self.nav) != self.iuv:
            raise ValueError(f"iuv: {self.iuv!r} is not the IUV inside NAV {self.nav!r}")
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite():
            raise ValueError(f"amount: must be a finite Decimal, got {self.amount!r}")
        if self.amount != self.amount.quantize(_CENT):
            raise ValueError(f"amount: more than two decimal places: {self.amount}")
        if not _CENT <= self.amount <= _MAX_AMOUNT:
            raise ValueError(f"amount: must be between 0.01 and {_MAX_AMOUNT}, got {self.amount}")
        # Two places always, so that 10 and 10.00 print and encode alike.
        object.__setattr__(self, "amount", self.amount.quantize(_CENT))
        if self.instalment is not None and (isinstance(self.instalment, bool) or self.instalment < 1):
            raise ValueError(f"instalment: must be a positive integer or None, got {self.instalment!r}")


@dataclass(frozen=True)
class NoticeContext:
    """Everything one notice document shows: creditor, debtor, reason and its payment options."""

    creditor: NoticeCreditor
    debtor: NoticeDebtor
    reason: str
    options: tuple[NoticeOption, ...]
    document_id: str | None = None
    language: str = "it"

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("options: a notice needs at least one payment option")
        if sum(1 for o in self.options if o.instalment is None) > 1:
            raise ValueError("options: at most one single-payment option")
        numbers = [o.instalment for o in self.options if o.instalment is not None]
        if len(numbers) != len(set(numbers)):
            raise ValueError("options: instalment numbers repeat")
        if len({o.nav for o in self.options}) != len(self.options):
            raise ValueError("options: each option needs its own NAV")
        if self.language not in _LABELS:
            raise ValueError(f"language: one of {sorted(_LABELS)}, got {self.language!r}")


# --- words --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Labels:
    """The fixed words of a notice in one language."""

    title: str
    creditor: str
    debtor: str
    fiscal_code: str
    how_much: str
    due_by: str
    instalment_of: str
    single_payment: str
    amount_note: str
    single_with_instalments: str
    instalment_note: str
    where: str
    where_online: str
    where_offline: str
    where_list: str
    use_portion: str
    bank_title: str
    bank_text: str
    recipient: str
    ec: str
    subject: str
    amount: str
    due: str
    no_due: str
    cbill: str
    notice_code: str
    ec_fiscal_code: str
    postal_title: str
    postal_account: str
    postal_holder: str
    postal_type: str
    postal_text: str
    postal_authorisation: str
    page: str
    document: str


# pagoPA's own notice wording is not reproduced: these sentences say the same in our words.
_LABELS: dict[str, _Labels] = {
    "it": _Labels(
        title="AVVISO DI PAGAMENTO",
        creditor="ENTE CREDITORE",
        debtor="DESTINATARIO AVVISO",
        fiscal_code="Cod. Fiscale",
        how_much="QUANTO E QUANDO PAGARE?",
        due_by="entro il {date}",
        instalment_of="Rata {n} di {total}",
        single_payment="Rata unica",
        amount_note=(
            "L'Ente Creditore può aggiornare l'importo (sconti, more, interessi): qualunque canale "
            "scegli, al momento del pagamento ti verrà chiesto l'importo dovuto in quel momento."
        ),
        single_with_instalments=(
            "Con questa pagina paghi tutto in un'unica soluzione; se preferisci pagare a rate, "
            "usa le pagine che seguono, una per rata."
        ),
        instalment_note="Ogni rata ha il suo codice avviso e va pagata entro la propria scadenza.",
        where="DOVE PAGARE?",
        where_online=(
            "ONLINE: nell'app IO, sul sito o nell'app dell'Ente Creditore, della tua banca e degli "
            "altri prestatori aderenti a pagoPA, con carta, conto corrente o CBILL."
        ),
        where_offline=(
            "SUL TERRITORIO: in banca e agli sportelli ATM abilitati, negli uffici postali, dal "
            "tabaccaio, in ricevitoria e nei supermercati aderenti, in contanti, con carta o conto."
        ),
        where_list="L'elenco aggiornato dei canali di pagamento è su www.pagopa.gov.it",
        use_portion="Usa la parte dell'avviso dedicata al canale con cui preferisci pagare.",
        bank_title="BANCHE E ALTRI CANALI",
        bank_text=(
            "Inquadra il codice QR, oppure comunica il codice avviso e il codice fiscale dell'Ente, "
            "per pagare in banca, in app e presso gli altri canali abilitati."
        ),
        recipient="Destinatario",
        ec="Ente Creditore",
        subject="Oggetto del pagamento",
        amount="Importo",
        due="Scadenza",
        no_due="nessuna scadenza",
        cbill="Codice CBILL",
        notice_code="Codice Avviso",
        ec_fiscal_code="Cod. Fiscale Ente Creditore",
        postal_title="BOLLETTINO POSTALE PA",
        postal_account="sul C/C n.",
        postal_holder="intestato a",
        postal_type="Tipo",
        postal_text=(
            "Pagabile in tutti gli uffici postali e sui canali fisici e digitali abilitati di Poste "
            "Italiane e dell'Ente Creditore."
        ),
        postal_authorisation="AUT.",
        page="Pagina {n} di {total}",
        document="Documento {id}",
    ),
    "en": _Labels(
        title="PAYMENT NOTICE",
        creditor="CREDITOR BODY",
        debtor="NOTICE ADDRESSEE",
        fiscal_code="Tax code",
        how_much="HOW MUCH AND WHEN?",
        due_by="by {date}",
        instalment_of="Instalment {n} of {total}",
        single_payment="Single payment",
        amount_note=(
            "The creditor body may update the amount (discounts, late fees, interest): whichever "
            "channel you choose, it asks for the amount due at the time you pay."
        ),
        single_with_instalments=(
            "This page pays everything at once; to pay in instalments use the following pages, "
            "one per instalment."
        ),
        instalment_note="Each instalment has its own notice code and must be paid by its own due date.",
        where="WHERE TO PAY?",
        where_online=(
            "ONLINE: in the IO app, on the website or app of the creditor body, of your bank and of "
            "the other providers in pagoPA, by card, bank account or CBILL."
        ),
        where_offline=(
            "IN PERSON: at banks and enabled ATMs, post offices, tobacconists, lottery outlets and "
            "participating supermarkets, in cash, by card or from your account."
        ),
        where_list="The current list of payment channels is on www.pagopa.gov.it",
        use_portion="Use the part of the notice for the channel you prefer.",
        bank_title="BANKS AND OTHER CHANNELS",
        bank_text=(
            "Scan the QR code, or give the notice code and the creditor body's tax code, to pay at "
            "banks, in apps and through the other enabled channels."
        ),
        recipient="Addressee",
        ec="Creditor body",
        subject="Payment subject",
        amount="Amount",
        due="Due date",
        no_due="no due date",
        cbill="CBILL code",
        notice_code="Notice code",
        ec_fiscal_code="Creditor body tax code",
        postal_title="POSTAL PAYMENT SLIP PA",
        postal_account="to account no.",
        postal_holder="held by",
        postal_type="Type",
        postal_text=(
            "Payable at every post office and on the enabled channels of Poste Italiane and of the "
            "creditor body."
        ),
        postal_authorisation="AUT.",
        page="Page {n} of {total}",
        document="Document {id}",
    ),
}


# --- formatting ---------------------------------------------------------------------------------


def format_amount(amount: Decimal) -> str:
    """Format euros the Italian way, e.g. `1.234,56 €`."""
    whole, cents = f"{amount.quantize(_CENT):.2f}".split(".")
    return f"{int(whole):,}".replace(",", ".") + f",{cents} €"


def format_due_date(due_date: date) -> str:
    """Format a due date as `dd/mm/yyyy`."""
    return due_date.strftime("%d/%m/%Y")


def _cents(amount: Decimal) -> int:
    return int(amount * 100)


def _winansi_set() -> frozenset[str]:
    chars = set()
    for code in range(0x20, 0x2200):
        ch = chr(code)
        if 0x7F <= code < 0xA0:
            continue
        try:
            ch.encode("cp1252")
        except UnicodeEncodeError:
            continue
        chars.add(ch)
    return frozenset(chars)


# Helvetica as reportlab ships it speaks WinAnsi (cp1252); anything else would print as black boxes.
_WINANSI = _winansi_set()
_TEXT_LIMIT = 600
# Latin letters that Unicode does not decompose into a base letter and a mark.
_NO_DECOMPOSITION = {"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i", "Ŧ": "T", "ŧ": "t"}


@functools.lru_cache(maxsize=4096)
def _fallback_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category == "Cf" or category == "Cs":
        # Bidi overrides, zero-width joiners and lone surrogates: invisible or unprintable, drop them.
        return ""
    if category[0] in "CZ":
        return " "
    if ch in _NO_DECOMPOSITION:
        return _NO_DECOMPOSITION[ch]
    folded = "".join(
        c for c in unicodedata.normalize("NFKD", ch) if c in _WINANSI and not unicodedata.combining(c)
    )
    return folded or "?"


def _clean(text: str | None, *, limit: int = _TEXT_LIMIT) -> str:
    """Make free text printable in Helvetica: one line, WinAnsi only, bounded length."""
    if not text:
        return ""
    if not isinstance(text, str):
        text = str(text)
    # Cut before the per-character work so a megabyte of name costs no more than a page of it.
    text = text[: limit * 2]
    if not all(ch in _WINANSI for ch in text):
        text = "".join(ch if ch in _WINANSI else _fallback_char(ch) for ch in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _fit(text: str, *, font: str, size: float, width: float) -> str:
    """Cut one line to `width`, ending with an ellipsis when something was cut."""
    if stringWidth(text, font, size) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if stringWidth(text[:mid] + "…", font, size) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


@functools.lru_cache(maxsize=4096)
def _wrap(text: str, *, font: str, size: float, width: float, max_lines: int) -> tuple[str, ...]:
    """Greedy word wrap within `width`; over-long words break anywhere; the last line is ellipsised."""
    lines: list[str] = []
    current = ""
    words = text.split(" ")
    for index, word in enumerate(words):
        candidate = f"{current} {word}" if current else word
        if stringWidth(candidate, font, size) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
            current = ""
        while stringWidth(word, font, size) > width:
            head = _fit(word, font=font, size=size, width=width)[:-1] or word[:1]
            lines.append(head)
            word = word[len(head) :]
            if len(lines) >= max_lines:
                break
        current = word
        if len(lines) >= max_lines:
            rest = " ".join([current, *words[index + 1 :]]).strip()
            if rest:
                lines[max_lines - 1] = _fit(
                    lines[max_lines - 1] + " " + rest, font=font, size=size, width=width
                )
            return tuple(lines[:max_lines])
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [
            _fit(" ".join(lines[max_lines - 1 :]), font=font, size=size, width=width)
        ]
    return tuple(lines)


# --- QR code and Poste data matrix --------------------------------------------------------------

_QR_SCALE = 4
_QR_BORDER = 4


def _bitmap(rows: Iterable[Iterable[int | bool]], *, scale: int) -> ImageReader:
    """A black-on-white greyscale image of a module matrix, scaled without blurring."""
    matrix = [bytes(0 if dark else 255 for dark in row) for row in rows]
    height, width = len(matrix), len(matrix[0])
    image = Image.frombytes("L", (width, height), b"".join(matrix))
    return ImageReader(image.resize((width * scale, height * scale), Image.Resampling.NEAREST))


def _qr_image(payload: str) -> ImageReader:
    # boost_error=False: segno would otherwise raise the level above M whenever it fits for free.
    qr = segno.make_qr(payload, error="m", boost_error=False)
    return _bitmap(qr.matrix_iter(scale=1, border=_QR_BORDER), scale=_QR_SCALE)


_POSTE_MAX_CENTS = 10**10 - 1  # the data matrix has ten digits for the amount
_DM_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,;:'-/()&+")


def _dm_field(text: str | None, width: int, *, upper: bool = False) -> str:
    # Poste readers take plain ASCII in fixed-width fields: fold accents, blank everything else.
    folded = unicodedata.normalize("NFKD", (text or "")[: width * 4])
    chars = [c if c in _DM_ALLOWED else " " for c in folded if not unicodedata.combining(c)]
    value = " ".join("".join(chars).split())
    value = value.upper() if upper else value
    return value[:width].ljust(width)


def poste_datamatrix_payload(
    *,
    nav: str,
    postal_account: str,
    amount: Decimal,
    creditor_fiscal_code: str,
    debtor_fiscal_code: str,
    debtor_name: str,
    reason: str,
) -> str:
    """Return the Poste 'bollettino PA' data matrix text: `codfase=NBPA;18<NAV>12<account>10<cents>3896…A`."""
    account = "".join(c for c in postal_account if c.isascii() and c.isdigit())
    if not account or len(account) > 12:
        raise ValueError(f"postal_account: 1 to 12 digits, got {postal_account!r}")
    cents = _cents(amount)
    if not 0 < cents <= _POSTE_MAX_CENTS:
        raise ValueError(f"amount: a postal slip carries at most {_POSTE_MAX_CENTS} cents, got {amount}")
    codeline = f"18{nav}12{account.zfill(12)}10{cents:010d}3896"
    return (
        f"codfase=NBPA;{codeline}1P1{creditor_fiscal_code}"
        f"{_dm_field(debtor_fiscal_code, 16, upper=True)}{_dm_field(debtor_name, 40, upper=True)}"
        f"{_dm_field(reason, 110)}{' ' * 12}A"
    )


# ECC200 square symbols: (size, data region side, regions per side, data codewords, ecc per block, blocks).
_DM_SYMBOLS = (
    (10, 8, 1, 3, 5, 1), (12, 10, 1, 5, 7, 1), (14, 12, 1, 8, 10, 1), (16, 14, 1, 12, 12, 1),
    (18, 16, 1, 18, 14, 1), (20, 18, 1, 22, 18, 1), (22, 20, 1, 30, 20, 1), (24, 22, 1, 36, 24, 1),
    (26, 24, 1, 44, 28, 1), (32, 14, 2, 62, 36, 1), (36, 16, 2, 86, 42, 1), (40, 18, 2, 114, 48, 1),
    (44, 20, 2, 144, 56, 1), (48, 22, 2, 174, 68, 1), (52, 24, 2, 204, 42, 2), (64, 14, 4, 280, 56, 2),
    (72, 16, 4, 368, 36, 4), (80, 18, 4, 456, 48, 4),
)  # fmt: skip


def _gf_tables() -> tuple[list[int], list[int]]:
    exp, log = [0] * 512, [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= 0x12D  # x^8 + x^5 + x^3 + x^2 + 1, the ECC200 field
    for power in range(255, 512):
        exp[power] = exp[power - 255]
    return exp, log


_GF_EXP, _GF_LOG = _gf_tables()


@functools.lru_cache(maxsize=16)
def _rs_generator(degree: int) -> tuple[int, ...]:
    poly = [1]
    for power in range(1, degree + 1):
        nxt = poly + [0]
        for i, coef in enumerate(poly):
            if coef:
                nxt[i + 1] ^= _GF_EXP[_GF_LOG[coef] + power]
        poly = nxt
    return tuple(_GF_LOG[c] for c in poly[1:])  # as logs: the products below need only additions


def _rs_ecc(data: list[int], degree: int) -> list[int]:
    gen_logs = _rs_generator(degree)
    ecc = [0] * degree
    for word in data:
        feedback = word ^ ecc[0]
        ecc = ecc[1:] + [0]
        if feedback:
            fb_log = _GF_LOG[feedback]
            for i, g_log in enumerate(gen_logs):
                ecc[i] ^= _GF_EXP[fb_log + g_log]
    return ecc


def _dm_codewords(text: str) -> list[int]:
    data = text.encode("latin-1", errors="replace")
    words: list[int] = []
    i = 0
    while i < len(data):
        a = data[i]
        if 48 <= a <= 57 and i + 1 < len(data) and 48 <= data[i + 1] <= 57:
            words.append(130 + (a - 48) * 10 + data[i + 1] - 48)
            i += 2
            continue
        if a > 127:
            words += [235, a - 127]  # upper shift
        else:
            words.append(a + 1)
        i += 1
    return words


def _dm_place(nrow: int, ncol: int) -> list[list[tuple[int, int] | None]]:
    """ECC200 module placement (ISO/IEC 16022 annex F): which codeword bit sits in each module."""
    grid: list[list[tuple[int, int] | None]] = [[None] * ncol for _ in range(nrow)]
    filled = [[False] * ncol for _ in range(nrow)]

    def module(row: int, col: int, word: int, bit: int) -> None:
        if row < 0:
            row += nrow
            col += 4 - ((nrow + 4) % 8)
        if col < 0:
            col += ncol
            row += 4 - ((ncol + 4) % 8)
        grid[row][col] = (word, bit)
        filled[row][col] = True

    def utah(row: int, col: int, word: int) -> None:
        for bit, (dr, dc) in enumerate(
            ((-2, -2), (-2, -1), (-1, -2), (-1, -1), (-1, 0), (0, -2), (0, -1), (0, 0))
        ):
            module(row + dr, col + dc, word, bit)

    def corner(word: int, cells: tuple[tuple[int, int], ...]) -> None:
        for bit, (r, c) in enumerate(cells):
            module(r, c, word, bit)

    word, row, col = 0, 4, 0
    while True:
        if row == nrow and col == 0:
            corner(
                word,
                (
                    (nrow - 1, 0),
                    (nrow - 1, 1),
                    (nrow - 1, 2),
                    (0, ncol - 2),
                    (0, ncol - 1),
                    (1, ncol - 1),
                    (2, ncol - 1),
                    (3, ncol - 1),
                ),
            )
            word += 1
        if row == nrow - 2 and col == 0 and ncol % 4:
            corner(
                word,
                (
                    (nrow - 3, 0),
                    (nrow - 2, 0),
                    (nrow - 1, 0),
                    (0, ncol - 4),
                    (0, ncol - 3),
                    (0, ncol - 2),
                    (0, ncol - 1),
                    (1, ncol - 1),
                ),
            )
            word += 1
        if row == nrow - 2 and col == 0 and ncol % 8 == 4:
            corner(
                word,
                (
                    (nrow - 3, 0),
                    (nrow - 2, 0),
                    (nrow - 1, 0),
                    (0, ncol - 2),
                    (0, ncol - 1),
                    (1, ncol - 1),
                    (2, ncol - 1),
                    (3, ncol - 1),
                ),
            )
            word += 1
        if row == nrow + 4 and col == 2 and not ncol % 8:
            corner(
                word,
                (
                    (nrow - 1, 0),
                    (nrow - 1, ncol - 1),
                    (0, ncol - 3),
                    (0, ncol - 2),
                    (0, ncol - 1),
                    (1, ncol - 3),
                    (1, ncol - 2),
                    (1, ncol - 1),
                ),
            )
            word += 1
        while True:
            if row < nrow and col >= 0 and not filled[row][col]:
                utah(row, col, word)
                word += 1
            row -= 2
            col += 2
            if not (row >= 0 and col < ncol):
                break
        row += 1
        col += 3
        while True:
            if row >= 0 and col < ncol and not filled[row][col]:
                utah(row, col, word)
                word += 1
            row += 2
            col -= 2
            if not (row < nrow and col >= 0):
                break
        row += 3
        col += 1
        if not (row < nrow or col < ncol):
            break
    return grid


_dm_place_cached = functools.lru_cache(maxsize=8)(_dm_place)


def datamatrix_modules(text: str) -> list[list[bool]]:
    """Encode text (Latin-1) as an ECC200 Data Matrix; rows top to bottom, True is dark."""
    data = _dm_codewords(text)
    symbol_spec = next((spec for spec in _DM_SYMBOLS if len(data) <= spec[3]), None)
    if symbol_spec is None:
        raise ValueError(f"data matrix: {len(data)} codewords exceed the largest supported symbol")
    size, region, per_side, capacity, ecc_len, blocks = symbol_spec
    if len(data) < capacity:
        data.append(129)
        while len(data) < capacity:
            pad = 129 + (149 * (len(data) + 1)) % 253 + 1
            data.append(pad - 254 if pad > 254 else pad)
    # Blocks take every n-th data codeword; their ecc codewords interleave the same way.
    stream = data + [0] * (ecc_len * blocks)
    for block in range(blocks):
        for j, word in enumerate(_rs_ecc(data[block::blocks], ecc_len)):
            stream[capacity + j * blocks + block] = word
    nrow = ncol = region * per_side
    placement = _dm_place_cached(nrow, ncol)
    mapping = [
        [bool(stream[cell[0]] & (0x80 >> cell[1])) if cell is not None else False for cell in placement_row]
        for placement_row in placement
    ]
    if placement[nrow - 1][ncol - 1] is None:
        # The fixed pattern of symbols whose mapping leaves the lower right 2x2 corner unused.
        mapping[nrow - 1][ncol - 1] = mapping[nrow - 2][ncol - 2] = True
    symbol = [[False] * size for _ in range(size)]
    step = region + 2
    for r in range(size):
        region_row, inner_r = divmod(r, step)
        for c in range(size):
            region_col, inner_c = divmod(c, step)
            if inner_c == 0 or inner_r == step - 1:
                dark = True  # solid finder "L": left column and bottom row of every region
            elif inner_r == 0:
                dark = inner_c % 2 == 0  # clock track along the top
            elif inner_c == step - 1:
                dark = inner_r % 2 == 1  # clock track down the right side
            else:
                dark = mapping[region_row * region + inner_r - 1][region_col * region + inner_c - 1]
            symbol[r][c] = dark
    return symbol


def _datamatrix_image(text: str) -> ImageReader:
    modules = datamatrix_modules(text)
    quiet = [False] * (len(modules) + 4)
    rows = [quiet, quiet, *([False, False, *row, False, False] for row in modules), quiet, quiet]
    return _bitmap(rows, scale=4)


# --- logo ---------------------------------------------------------------------------------------

_LOGO_MAX_PX = 240  # 320 dpi over the 54 pt logo box: sharp in print, cheap to embed


@functools.lru_cache(maxsize=64)
def _load_logo(path: str, mtime_ns: int, size: int) -> ImageReader | None:
    # Keyed on mtime and size too so that a replaced logo file is picked up without a restart.
    try:
        with Image.open(path) as source:
            source.load()
            image: Image.Image = source
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
                # Flattened onto the white page: a soft mask would double the work for every notice.
                background = Image.new("RGB", image.size, (255, 255, 255))
                background.paste(image, mask=image.getchannel("A"))
                image = background
            elif image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            image.thumbnail((_LOGO_MAX_PX, _LOGO_MAX_PX), Image.Resampling.LANCZOS)
            reader = ImageReader(image.copy())
            reader.getRGBData()  # decode once here, not once per notice
            return reader
    # PIL reports some corrupt files with SyntaxError, and oversized ones with DecompressionBombError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        logger.warning("logo %s not usable, notices go without it: %s", path, exc)
        return None


def _logo(path: str | None) -> ImageReader | None:
    if not path:
        return None
    try:
        stat = os.stat(path)
    except OSError as exc:
        logger.warning("logo %s not readable, notices go without it: %s", path, exc)
        return None
    return _load_logo(path, stat.st_mtime_ns, stat.st_size)


# --- drawing ------------------------------------------------------------------------------------

_PAGE_W, _PAGE_H = A4
_MARGIN = 28.0
_CONTENT_W = _PAGE_W - 2 * _MARGIN
_BLUE = Color(0, 0.4, 0.8)
_DARK = Color(0.09, 0.2, 0.3)
_GREY = Color(0.35, 0.4, 0.45)
_LIGHT = Color(0.93, 0.95, 0.97)
_RULE = Color(0.75, 0.8, 0.85)
_REG, _BOLD, _ITALIC = "Helvetica", "Helvetica-Bold", "Helvetica-Oblique"
_BANK_H = 172.0
_POSTAL_H = 164.0


@dataclass(frozen=True)
class _Page:
    """One page to draw: the option it carries and the words around it, all already cleaned."""

    option: NoticeOption
    headline: str
    note: str
    number: int
    total: int
    postal_account: str | None


@dataclass(frozen=True)
class _Texts:
    """The free texts of a notice, cleaned once for all its pages."""

    ec_name: str
    ec_fiscal_code: str
    sector: str
    info: str
    cbill: str
    postal_authorisation: str
    debtor_name: str
    debtor_fiscal_code: str
    debtor_address: str
    reason: str
    document_id: str


def _texts(ctx: NoticeContext) -> _Texts:
    creditor, debtor = ctx.creditor, ctx.debtor
    return _Texts(
        ec_name=_clean(creditor.name),
        ec_fiscal_code=creditor.fiscal_code,
        sector=_clean(creditor.sector),
        info=_clean(creditor.info),
        cbill=_clean(creditor.cbill, limit=40),
        postal_authorisation=_clean(creditor.postal_authorisation, limit=120),
        debtor_name=_clean(debtor.name),
        debtor_fiscal_code=_clean(debtor.fiscal_code, limit=40),
        debtor_address=_clean(debtor.address),
        reason=_clean(ctx.reason),
        document_id=_clean(ctx.document_id, limit=80),
    )


def _postal_account(creditor: NoticeCreditor) -> str | None:
    account = (creditor.postal_account or "").replace(" ", "")
    if account and _DIGITS.fullmatch(account) and len(account) <= 12:
        return account
    if account:
        logger.warning(
            "postal account %r of EC %s is not 1-12 digits: no postal slip", account, creditor.fiscal_code
        )
    return None


def _pages(ctx: NoticeContext, labels: _Labels) -> list[_Page]:
    """Decide the pages: the single payment first, then one page per instalment in order."""
    single = [o for o in ctx.options if o.instalment is None]
    instalments = sorted(
        (o for o in ctx.options if o.instalment is not None), key=lambda o: o.instalment or 0
    )
    account = _postal_account(ctx.creditor)
    ordered = single + instalments
    pages = []
    for number, option in enumerate(ordered, start=1):
        if option.instalment is None:
            headline = labels.single_payment if instalments else ""
            note = labels.single_with_instalments if instalments else labels.amount_note
        else:
            headline = labels.instalment_of.format(n=option.instalment, total=len(instalments))
            note = labels.instalment_note + " " + labels.amount_note
        # Amounts above the slip's ten digits go without it; the bank band still pays them.
        postal = option.postal and _cents(option.amount) <= _POSTE_MAX_CENTS
        pages.append(
            _Page(
                option=option,
                headline=headline,
                note=note,
                number=number,
                total=len(ordered),
                postal_account=account if postal else None,
            )
        )
    return pages


def _lines(
    c: Canvas, x: float, y: float, lines: tuple[str, ...], *, font: str, size: float, leading: float
) -> float:
    c.setFont(font, size)
    for line in lines:
        c.drawString(x, y, line)
        y -= leading
    return y


def _para(
    c: Canvas,
    x: float,
    y: float,
    text: str,
    *,
    font: str,
    size: float,
    width: float,
    max_lines: int,
    leading: float | None = None,
) -> float:
    # Cached: the fixed wording and a creditor's own texts repeat on every notice of a batch.
    lines = _wrap(text, font=font, size=size, width=width, max_lines=max_lines) if text else ()
    return _lines(c, x, y, lines, font=font, size=size, leading=leading or size * 1.22)


def _field(
    c: Canvas,
    x: float,
    y: float,
    label: str,
    value: str,
    *,
    width: float,
    size: float = 9,
    font: str = _BOLD,
    max_lines: int = 1,
) -> float:
    c.setFillColor(_GREY)
    c.setFont(_REG, 6.5)
    c.drawString(x, y, label)
    c.setFillColor(_DARK)
    return _para(c, x, y - size - 1, value, font=font, size=size, width=width, max_lines=max_lines) - 3


def _band_title(c: Canvas, y_top: float, title: str, right: str) -> None:
    c.setFillColor(_BLUE)
    c.rect(_MARGIN, y_top - 18, _CONTENT_W, 18, stroke=0, fill=1)
    c.setFillColor(white)
    c.setFont(_BOLD, 10)
    c.drawString(_MARGIN + 8, y_top - 13, title)
    c.setFont(_REG, 7)
    c.drawRightString(_MARGIN + _CONTENT_W - 8, y_top - 12.5, _fit(right, font=_REG, size=7, width=300))


def _draw_header(c: Canvas, t: _Texts, logo: ImageReader | None) -> float:
    top = _PAGE_H - _MARGIN
    x = _MARGIN
    if logo is not None:
        c.drawImage(logo, _MARGIN, top - 54, width=54, height=54, preserveAspectRatio=True, anchor="nw")
        x += 64
    width = _CONTENT_W - (x - _MARGIN) - 80
    c.setFillColor(_DARK)
    y = _para(c, x, top - 11, t.ec_name, font=_BOLD, size=12, width=width, max_lines=2)
    c.setFillColor(_GREY)
    if t.sector:
        y = _para(c, x, y, t.sector, font=_REG, size=8.5, width=width, max_lines=1)
    if t.info:
        _para(c, x, y, t.info, font=_REG, size=7.5, width=width, max_lines=2)
    c.setFillColor(_BLUE)
    c.setFont(_BOLD, 16)
    c.drawRightString(_MARGIN + _CONTENT_W, top - 16, "pagoPA")
    c.setStrokeColor(_RULE)
    c.setLineWidth(0.8)
    c.line(_MARGIN, top - 62, _MARGIN + _CONTENT_W, top - 62)
    return top - 62


def _draw_title(c: Canvas, y: float, t: _Texts, page: _Page, labels: _Labels) -> float:
    c.setFillColor(_DARK)
    c.setFont(_BOLD, 19)
    c.drawString(_MARGIN, y - 26, labels.title)
    if page.headline:
        c.setFillColor(_BLUE)
        c.setFont(_BOLD, 12)
        c.drawRightString(_MARGIN + _CONTENT_W, y - 25, page.headline)
    c.setFillColor(_DARK)
    _para(c, _MARGIN, y - 44, t.reason, font=_REG, size=10.5, width=_CONTENT_W, max_lines=3)
    return y - 90


def _draw_parties(c: Canvas, y: float, t: _Texts, labels: _Labels) -> float:
    half = _CONTENT_W / 2
    for x, label, name, fiscal_code, address in (
        (_MARGIN, labels.creditor, t.ec_name, t.ec_fiscal_code, ""),
        (_MARGIN + half + 6, labels.debtor, t.debtor_name, t.debtor_fiscal_code, t.debtor_address),
    ):
        c.setFillColor(_BLUE)
        c.setFont(_BOLD, 8)
        c.drawString(x, y, label)
        c.setFillColor(_DARK)
        yy = _para(c, x, y - 13, name, font=_BOLD, size=10, width=half - 12, max_lines=2)
        c.setFont(_REG, 8.5)
        c.drawString(x, yy, f"{labels.fiscal_code} {fiscal_code}")
        _para(c, x, yy - 11, address, font=_REG, size=8.5, width=half - 12, max_lines=2)
    return y - 78


def _draw_summary(c: Canvas, y: float, page: _Page, labels: _Labels) -> float:
    height = 122.0
    c.setFillColor(_LIGHT)
    c.roundRect(_MARGIN, y - height, _CONTENT_W, height, 6, stroke=0, fill=1)
    left_w = _CONTENT_W * 0.42
    x = _MARGIN + 10
    c.setFillColor(_BLUE)
    c.setFont(_BOLD, 9.5)
    c.drawString(x, y - 18, labels.how_much)
    c.setFillColor(_DARK)
    c.setFont(_BOLD, 20)
    c.drawString(x, y - 42, format_amount(page.option.amount))
    yy = y - 58
    if page.option.due_date is not None:
        c.setFont(_BOLD, 11)
        c.drawString(x, yy, labels.due_by.format(date=format_due_date(page.option.due_date)))
        yy -= 16
    c.setFillColor(_GREY)
    _para(c, x, yy, page.note, font=_REG, size=7.5, width=left_w - 16, max_lines=6)
    rx = _MARGIN + left_w + 10
    right_w = _CONTENT_W - left_w - 20
    c.setStrokeColor(_RULE)
    c.line(rx - 10, y - 12, rx - 10, y - height + 12)
    c.setFillColor(_BLUE)
    c.setFont(_BOLD, 9.5)
    c.drawString(rx, y - 18, labels.where)
    c.setFillColor(_DARK)
    yy = _para(c, rx, y - 34, labels.where_online, font=_REG, size=8, width=right_w, max_lines=4) - 5
    yy = _para(c, rx, yy, labels.where_offline, font=_REG, size=8, width=right_w, max_lines=4) - 5
    _para(c, rx, yy, labels.where_list, font=_ITALIC, size=7.5, width=right_w, max_lines=2)
    c.setFillColor(_GREY)
    c.setFont(_ITALIC, 7.5)
    c.drawString(_MARGIN, y - height - 14, labels.use_portion)
    return y - height - 20


def _draw_bank(c: Canvas, y_top: float, t: _Texts, page: _Page, labels: _Labels) -> None:
    option = page.option
    _band_title(c, y_top, labels.bank_title, page.headline)
    c.setStrokeColor(_RULE)
    c.rect(_MARGIN, y_top - _BANK_H, _CONTENT_W, _BANK_H, stroke=1, fill=0)
    payload = qr_payload(nav=option.nav, fiscal_code=t.ec_fiscal_code, amount=option.amount)
    qr_size = 118.0
    c.drawImage(_qr_image(payload), _MARGIN + 6, y_top - 24 - qr_size, width=qr_size, height=qr_size)
    x = _MARGIN + qr_size + 18
    col_w = 220.0
    c.setFillColor(_GREY)
    y = _para(c, x, y_top - 30, labels.bank_text, font=_REG, size=7, width=col_w, max_lines=3) - 6
    y = _field(c, x, y, labels.recipient, t.debtor_name, width=col_w)
    y = _field(c, x, y, labels.ec, t.ec_name, width=col_w, max_lines=2)
    _field(c, x, y, labels.subject, t.reason, width=col_w, font=_REG, size=8, max_lines=3)
    x2 = x + col_w + 14
    w2 = _MARGIN + _CONTENT_W - x2 - 8
    y = _field(c, x2, y_top - 32, labels.amount, format_amount(option.amount), width=w2, size=14)
    due = format_due_date(option.due_date) if option.due_date is not None else labels.no_due
    y = _field(c, x2, y, labels.due, due, width=w2, size=10)
    y = _field(c, x2, y, labels.notice_code, format_nav(option.nav), width=w2, size=11)
    y = _field(c, x2, y, labels.ec_fiscal_code, t.ec_fiscal_code, width=w2, size=10)
    if t.cbill:
        _field(c, x2, y, labels.cbill, t.cbill, width=w2, size=10)


def _draw_postal(
    c: Canvas,
    y_top: float,
    t: _Texts,
    page: _Page,
    account: str,
    labels: _Labels,
    debtor_fiscal_code: str,
    debtor_name: str,
    reason: str,
) -> None:
    option = page.option
    _band_title(c, y_top, labels.postal_title, page.headline)
    c.setStrokeColor(_RULE)
    c.rect(_MARGIN, y_top - _POSTAL_H, _CONTENT_W, _POSTAL_H, stroke=1, fill=0)
    payload = poste_datamatrix_payload(
        nav=option.nav,
        postal_account=account,
        amount=option.amount,
        creditor_fiscal_code=t.ec_fiscal_code,
        debtor_fiscal_code=debtor_fiscal_code,
        debtor_name=debtor_name,
        reason=reason,
    )
    dm_size = 104.0
    dm_x = _MARGIN + _CONTENT_W - dm_size - 8
    c.drawImage(_datamatrix_image(payload), dm_x, y_top - 26 - dm_size, width=dm_size, height=dm_size)
    x = _MARGIN + 10
    col_w = 200.0
    y = _field(c, x, y_top - 32, labels.postal_account, account.zfill(12), width=col_w, size=12)
    y = _field(c, x, y, labels.postal_holder, t.ec_name, width=col_w, max_lines=2)
    y = _field(c, x, y, labels.recipient, t.debtor_name, width=col_w)
    _field(c, x, y, labels.subject, t.reason, width=col_w, font=_REG, size=8, max_lines=2)
    x2 = x + col_w + 12
    w2 = _MARGIN + _CONTENT_W - dm_size - 20 - x2
    y = _field(c, x2, y_top - 32, labels.amount, format_amount(option.amount), width=w2, size=12)
    y = _field(c, x2, y, labels.notice_code, format_nav(option.nav), width=w2, size=10)
    y = _field(c, x2, y, labels.postal_type, "P1", width=w2, size=10)
    _field(c, x2, y, labels.ec_fiscal_code, t.ec_fiscal_code, width=w2, size=10)
    if t.postal_authorisation:
        c.setFillColor(_GREY)
        _para(
            c,
            dm_x,
            y_top - 36 - dm_size,
            f"{labels.postal_authorisation} {t.postal_authorisation}",
            font=_REG,
            size=6.5,
            width=dm_size + 4,
            max_lines=2,
        )
    c.setFillColor(_GREY)
    _para(
        c,
        x,
        y_top - _POSTAL_H + 8,
        labels.postal_text,
        font=_ITALIC,
        size=6.5,
        width=dm_x - x - 10,
        max_lines=1,
    )


def _draw_footer(c: Canvas, t: _Texts, page: _Page, labels: _Labels) -> None:
    c.setFillColor(_GREY)
    c.setFont(_REG, 6.5)
    parts = [labels.page.format(n=page.number, total=page.total)]
    if t.document_id:
        parts.insert(0, labels.document.format(id=t.document_id))
    c.drawRightString(
        _MARGIN + _CONTENT_W,
        _MARGIN / 2 - 2,
        _fit("  ·  ".join(parts), font=_REG, size=6.5, width=_CONTENT_W),
    )


def _draw_notice(c: Canvas, ctx: NoticeContext) -> None:
    labels = _LABELS[ctx.language]
    t = _texts(ctx)
    logo = _logo(ctx.creditor.logo_path)
    for page in _pages(ctx, labels):
        y = _draw_header(c, t, logo)
        y = _draw_title(c, y, t, page, labels)
        y = _draw_parties(c, y, t, labels)
        _draw_summary(c, y, page, labels)
        bottom = _MARGIN
        if page.postal_account is not None:
            _draw_postal(
                c,
                bottom + _POSTAL_H,
                t,
                page,
                page.postal_account,
                labels,
                debtor_fiscal_code=ctx.debtor.fiscal_code,
                debtor_name=ctx.debtor.name,
                reason=ctx.reason,
            )
            bottom += _POSTAL_H + 8
        _draw_bank(c, bottom + _BANK_H, t, page, labels)
        _draw_footer(c, t, page, labels)
        c.showPage()


@contextlib.contextmanager
def _binary_streams() -> Iterator[None]:
    # reportlab wraps every stream in ASCII85 by default, in pure Python unless the optional rl_accel
    # extension is installed: a third of the render time for text that no one reads. Binary streams are
    # valid PDF and smaller. The flag is process-wide; another thread rendering meanwhile only gets
    # one encoding or the other, both valid.
    previous = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = previous


def _render(contexts: Iterator[NoticeContext], *, title: str) -> bytes:
    with _binary_streams():
        return _render_binary(contexts, title=title)


def _render_binary(contexts: Iterator[NoticeContext], *, title: str) -> bytes:
    buffer = io.BytesIO()
    # invariant: no timestamps or random ids, so the same context always gives the same bytes.
    canvas = Canvas(buffer, pagesize=A4, invariant=True, pageCompression=1)
    canvas.setTitle(title)
    canvas.setCreator("pagoflow")
    drawn = False
    for ctx in contexts:
        _draw_notice(canvas, ctx)
        drawn = True
    if not drawn:
        raise ValueError("contexts: nothing to render")
    canvas.save()
    return buffer.getvalue()


def render_notice_pdf(ctx: NoticeContext) -> bytes:
    """Render one notice (single payment and/or instalments, one page each) as PDF bytes."""
    labels = _LABELS[ctx.language]
    return _render(iter((ctx,)), title=f"{labels.title.title()} {format_nav(ctx.options[0].nav)}")


def render_notices_pdf(contexts: Iterable[NoticeContext]) -> bytes:
    """Render many notices, one after the other, into a single PDF."""
    return _render(iter(contexts), title="Avvisi di pagamento")
