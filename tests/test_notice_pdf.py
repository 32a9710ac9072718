"""Payment notice PDFs: text, QR code, instalments, postal slip, logo and hostile input."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pypdf import PdfReader

from reports.notice import (
    NoticeContext,
    NoticeCreditor,
    NoticeDebtor,
    NoticeOption,
    datamatrix_modules,
    format_amount,
    poste_datamatrix_payload,
    render_notice_pdf,
    render_notices_pdf,
)
from rules.identifiers import build_notice, format_nav

EC = "77777777777"


def make_option(progressive: int = 1, **overrides: object) -> NoticeOption:
    notice = build_notice(aux_digit=3, progressive=progressive, segregation_code="01")
    fields: dict[str, object] = {
        "nav": notice.nav,
        "iuv": notice.iuv,
        "amount": Decimal("1234.56"),
        "due_date": date(2025, 3, 31),
    }
    fields.update(overrides)
    return NoticeOption(**fields)  # type: ignore[arg-type]


def make_context(**overrides: object) -> NoticeContext:
    fields: dict[str, object] = {
        "creditor": NoticeCreditor(
            fiscal_code=EC,
            name="Comune di Esempio",
            sector="Settore Tributi",
            info="Piazza del Municipio 1, 20100 Esempio (MI)",
            cbill="AB12C",
        ),
        "debtor": NoticeDebtor(
            fiscal_code="RSSMRA80A01H501U", name="Mario Rossi", address="Via Roma 10, Milano"
        ),
        "reason": "TARI 2025 utenza domestica",
        "options": (make_option(),),
    }
    fields.update(overrides)
    return NoticeContext(**fields)  # type: ignore[arg-type]


def pages_text(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def page_images(pdf: bytes) -> list[list[Image.Image]]:
    pages = PdfReader(io.BytesIO(pdf)).pages
    return [[image.image for image in page.images if image.image is not None] for page in pages]


def decode(image: Image.Image) -> list[Any]:
    zxingcpp = pytest.importorskip("zxingcpp")
    return list(zxingcpp.read_barcodes(image))


def codes(pdf: bytes, kind: str) -> list[list[Any]]:
    """Per page, the barcodes of one kind ("QR" or "DataMatrix") decoded from the embedded images."""
    zxingcpp = pytest.importorskip("zxingcpp")
    fmt = {"QR": zxingcpp.BarcodeFormat.QRCode, "DataMatrix": zxingcpp.BarcodeFormat.DataMatrix}[kind]
    return [[b for image in images for b in decode(image) if b.format == fmt] for images in page_images(pdf)]


# --- text -----------------------------------------------------------------------------------------


def test_single_notice_text_carries_every_printed_field() -> None:
    ctx = make_context()
    (text,) = pages_text(render_notice_pdf(ctx))
    nav = ctx.options[0].nav
    for expected in (
        "AVVISO DI PAGAMENTO",
        "Comune di Esempio",
        "Settore Tributi",
        "Piazza del Municipio 1, 20100 Esempio (MI)",
        EC,
        "Mario Rossi",
        "RSSMRA80A01H501U",
        "Via Roma 10, Milano",
        "TARI 2025 utenza domestica",
        "1.234,56 €",
        "entro il 31/03/2025",
        "31/03/2025",
        format_nav(nav),
        "3010 0000 0000 0001 44",
        "Codice CBILL",
        "AB12C",
        "QUANTO E QUANDO PAGARE?",
        "DOVE PAGARE?",
        "BANCHE E ALTRI CANALI",
    ):
        assert expected in text, expected
    assert "BOLLETTINO POSTALE PA" not in text


def test_cbill_absent_when_not_configured() -> None:
    ctx = make_context(creditor=NoticeCreditor(fiscal_code=EC, name="Comune di Esempio"))
    (text,) = pages_text(render_notice_pdf(ctx))
    assert "CBILL" not in text.replace("conto corrente o CBILL", "")


def test_no_due_date_prints_no_deadline() -> None:
    ctx = make_context(options=(make_option(due_date=None),))
    (text,) = pages_text(render_notice_pdf(ctx))
    assert "entro il" not in text
    assert "nessuna scadenza" in text


@pytest.mark.parametrize(
    ("amount", "printed"),
    [
        (Decimal("0.01"), "0,01 €"),
        (Decimal("5"), "5,00 €"),
        (Decimal("999.90"), "999,90 €"),
        (Decimal("1000"), "1.000,00 €"),
        (Decimal("1234567.89"), "1.234.567,89 €"),
    ],
)
def test_amounts_are_formatted_the_italian_way(amount: Decimal, printed: str) -> None:
    assert format_amount(amount) == printed


def test_english_labels() -> None:
    (text,) = pages_text(render_notice_pdf(make_context(language="en")))
    assert "PAYMENT NOTICE" in text
    assert "BANKS AND OTHER CHANNELS" in text
    assert "by 31/03/2025" in text
    assert "1.234,56 €" in text


def test_same_context_gives_same_bytes() -> None:
    assert render_notice_pdf(make_context()) == render_notice_pdf(make_context())


# --- QR code ----------------------------------------------------------------------------------------


def test_qr_code_carries_exact_payload_at_level_m() -> None:
    ctx = make_context()
    (page_codes,) = codes(render_notice_pdf(ctx), "QR")
    assert len(page_codes) == 1
    (qr,) = page_codes
    assert qr.text == f"PAGOPA|002|{ctx.options[0].nav}|{EC}|123456"
    assert qr.ec_level == "M"


def test_qr_amount_in_cents_keeps_trailing_zeros() -> None:
    ctx = make_context(options=(make_option(amount=Decimal("10")),))
    ((qr,),) = codes(render_notice_pdf(ctx), "QR")
    assert qr.text.endswith(f"|{EC}|1000")


# --- instalments ------------------------------------------------------------------------------------


def instalment_context() -> NoticeContext:
    options = (
        make_option(4, amount=Decimal("300.00"), due_date=date(2025, 9, 30), instalment=3),
        make_option(1, amount=Decimal("880.00"), due_date=date(2025, 3, 31)),
        make_option(2, amount=Decimal("300.00"), due_date=date(2025, 3, 31), instalment=1),
        make_option(3, amount=Decimal("300.50"), due_date=date(2025, 6, 30), instalment=2),
    )
    return make_context(options=options, document_id="TARI-2025-42")


def test_instalment_document_has_single_page_then_one_page_per_instalment() -> None:
    ctx = instalment_context()
    pdf = render_notice_pdf(ctx)
    texts = pages_text(pdf)
    assert len(texts) == 4
    by_page = [
        next(o for o in ctx.options if o.instalment is None),
        *sorted((o for o in ctx.options if o.instalment is not None), key=lambda o: o.instalment or 0),
    ]
    assert "Rata unica" in texts[0]
    for number, (text, option) in enumerate(zip(texts, by_page, strict=True), start=1):
        assert format_nav(option.nav) in text
        assert format_amount(option.amount) in text
        assert f"Pagina {number} di 4" in text
        assert "Documento TARI-2025-42" in text
        if option.instalment is not None:
            assert f"Rata {option.instalment} di 3" in text
            assert f"entro il {option.due_date:%d/%m/%Y}" in text
    for page_codes, option in zip(codes(pdf, "QR"), by_page, strict=True):
        (qr,) = page_codes
        assert qr.text == f"PAGOPA|002|{option.nav}|{EC}|{int(option.amount * 100)}"


def test_many_notices_in_one_pdf() -> None:
    contexts = [make_context(options=(make_option(i),)) for i in range(11, 14)] + [instalment_context()]
    pdf = render_notices_pdf(contexts)
    texts = pages_text(pdf)
    assert len(texts) == 3 + 4
    for i, text in enumerate(texts[:3], start=11):
        assert format_nav(make_option(i).nav) in text
    navs = [page[0].text.split("|")[2] for page in codes(pdf, "QR")]
    assert len(set(navs)) == 7


def test_render_notices_refuses_nothing() -> None:
    with pytest.raises(ValueError, match="nothing"):
        render_notices_pdf([])


# --- postal slip ------------------------------------------------------------------------------------


def postal_creditor() -> NoticeCreditor:
    return NoticeCreditor(
        fiscal_code=EC,
        name="Comune di Esempio",
        postal_account="1234567",
        postal_authorisation="DB/SSIC/E 1234",
    )


def test_postal_slip_with_data_matrix() -> None:
    ctx = make_context(creditor=postal_creditor(), options=(make_option(postal=True),))
    pdf = render_notice_pdf(ctx)
    (text,) = pages_text(pdf)
    assert "BOLLETTINO POSTALE PA" in text
    assert "000001234567" in text
    assert "DB/SSIC/E 1234" in text
    ((dm,),) = codes(pdf, "DataMatrix")
    nav = ctx.options[0].nav
    assert dm.text == poste_datamatrix_payload(
        nav=nav,
        postal_account="1234567",
        amount=Decimal("1234.56"),
        creditor_fiscal_code=EC,
        debtor_fiscal_code="RSSMRA80A01H501U",
        debtor_name="Mario Rossi",
        reason="TARI 2025 utenza domestica",
    )
    # The fixed positions that readers (the IO app among them) slice the code at.
    assert dm.text.startswith("codfase=NBPA;18")
    assert dm.text[15:33] == nav
    assert dm.text[35:47] == "000001234567"
    assert dm.text[49:59] == "0000123456"
    assert dm.text[59:66] == "38961P1"
    assert dm.text[66:77] == EC
    assert dm.text[77:93] == "RSSMRA80A01H501U"
    assert dm.text[93:133] == "MARIO ROSSI".ljust(40)
    assert len(dm.text) == 256 and dm.text.endswith("A")
    ((qr,),) = codes(pdf, "QR")
    assert qr.text.startswith(f"PAGOPA|002|{nav}|")


def test_postal_option_without_postal_account_prints_bank_band_only() -> None:
    ctx = make_context(options=(make_option(postal=True),))
    (text,) = pages_text(render_notice_pdf(ctx))
    assert "BOLLETTINO POSTALE PA" not in text
    assert "BANCHE E ALTRI CANALI" in text


def test_postal_slip_only_on_options_that_credit_the_postal_account() -> None:
    options = (make_option(1, postal=True), make_option(2, instalment=1, amount=Decimal("10.00")))
    texts = pages_text(render_notice_pdf(make_context(creditor=postal_creditor(), options=options)))
    assert "BOLLETTINO POSTALE PA" in texts[0]
    assert "BOLLETTINO POSTALE PA" not in texts[1]


def test_amount_beyond_the_slip_goes_without_it() -> None:
    option = make_option(postal=True, amount=Decimal("123456789.00"))
    (text,) = pages_text(render_notice_pdf(make_context(creditor=postal_creditor(), options=(option,))))
    assert "BOLLETTINO POSTALE PA" not in text
    assert "123.456.789,00 €" in text


def test_data_matrix_payload_folds_and_pads_free_text() -> None:
    payload = poste_datamatrix_payload(
        nav="301000000000000144",
        postal_account="12",
        amount=Decimal("0.01"),
        creditor_fiscal_code=EC,
        debtor_fiscal_code="rssmra80a01h501u",
        debtor_name="Niccolò D'Àngelo|<x>",
        reason="Più\ttasse " * 30,
    )
    assert len(payload) == 256
    assert payload[93:133] == "NICCOLO D'ANGELO X".ljust(40)
    assert payload[77:93] == "RSSMRA80A01H501U"
    assert payload[133:243].startswith("Piu tasse Piu tasse")


@pytest.mark.parametrize(
    "text", ["A", "0123456789" * 3, "Hello, Data Matrix!", "x" * 150, "9" * 700, "Ü" * 40]
)
def test_data_matrix_encoder_round_trips(text: str) -> None:
    modules = datamatrix_modules(text)
    size = len(modules)
    image = Image.new("L", (size + 4, size + 4), 255)
    for r, row in enumerate(modules):
        for c, dark in enumerate(row):
            if dark:
                image.putpixel((c + 2, r + 2), 0)
    image = image.resize(((size + 4) * 5, (size + 4) * 5), Image.Resampling.NEAREST)
    (barcode,) = decode(image)
    # Compared as bytes: the decoder guesses a charset for bytes above 127, ECC200 means Latin-1.
    assert barcode.bytes == text.encode("latin-1")


# --- logo ---------------------------------------------------------------------------------------------


def test_logo_is_embedded(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    Image.new("RGBA", (200, 100), (220, 30, 30, 255)).save(logo)
    creditor = NoticeCreditor(fiscal_code=EC, name="Comune di Esempio", logo_path=str(logo))
    pdf = render_notice_pdf(make_context(creditor=creditor))
    (images,) = page_images(pdf)
    assert len(images) == 2
    logos = [image for image in images if image.size == (200, 100)]
    assert len(logos) == 1
    red, green, blue = cast(tuple[int, int, int], logos[0].convert("RGB").getpixel((100, 50)))
    assert red > 200 and green < 60 and blue < 60
    # A second notice with the same logo still embeds it: every PDF stands alone.
    (images_again,) = page_images(render_notice_pdf(make_context(creditor=creditor)))
    assert len(images_again) == 2


def test_large_logo_is_scaled_down(tmp_path: Path) -> None:
    logo = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (0, 0, 200)).save(logo)
    creditor = NoticeCreditor(fiscal_code=EC, name="Comune di Esempio", logo_path=str(logo))
    (images,) = page_images(render_notice_pdf(make_context(creditor=creditor)))
    assert max(max(image.size) for image in images) <= 320


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()[:60]


@pytest.mark.parametrize("content", [None, b"not an image at all", _truncated_png()])
def test_missing_or_broken_logo_is_left_out(tmp_path: Path, content: bytes | None) -> None:
    logo = tmp_path / "logo.png"
    if content is not None:
        logo.write_bytes(content)
    creditor = NoticeCreditor(fiscal_code=EC, name="Comune di Esempio", logo_path=str(logo))
    pdf = render_notice_pdf(make_context(creditor=creditor))
    (images,) = page_images(pdf)
    assert len(images) == 1  # the QR code only
    assert "Comune di Esempio" in pages_text(pdf)[0]


# --- hostile input ------------------------------------------------------------------------------------


def test_hostile_strings_do_not_crash_and_print_as_text() -> None:
    creditor = NoticeCreditor(
        fiscal_code=EC,
        name="<script>alert('x')</script> & Co.",
        sector="Settore\x00 Tributi\u202e",
        info="(unbalanced \\ paren",
        cbill="<b>CB</b>",
    )
    debtor = NoticeDebtor(
        fiscal_code="RSSMRA80A01H501U", name="Z" * 20_000, address="Ζωή 東京 😀 Łódź Niccolò"
    )
    ctx = make_context(
        creditor=creditor, debtor=debtor, reason="%PDF-1.4 endstream endobj\n\r\t" + "parola " * 500
    )
    pdf = render_notice_pdf(ctx)
    (text,) = pages_text(pdf)
    assert "<script>alert('x')</script> & Co." in text
    assert "Settore Tributi" in text
    assert "(unbalanced \\ paren" in text
    assert "<b>CB</b>" in text
    assert "Z" * 30 in text and "…" in text
    assert "??? ?? ? Lódz Niccolò" in text  # Greek, CJK and emoji have no Latin fallback
    assert "%PDF-1.4 endstream endobj parola" in text
    assert len(pdf) < 200_000
    ((qr,),) = codes(pdf, "QR")
    assert qr.text.startswith("PAGOPA|002|")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=300), reason=st.text(max_size=300), address=st.none() | st.text(max_size=100))
def test_any_text_renders(name: str, reason: str, address: str | None) -> None:
    creditor = NoticeCreditor(fiscal_code=EC, name=name, postal_account="1234567", info=reason)
    debtor = NoticeDebtor(fiscal_code=name[:16], name=name, address=address)
    ctx = make_context(creditor=creditor, debtor=debtor, reason=reason, options=(make_option(postal=True),))
    (text,) = pages_text(render_notice_pdf(ctx))
    assert "3010 0000 0000 0001 44" in text


# --- validation ---------------------------------------------------------------------------------------


def test_context_validation() -> None:
    good = make_option()
    with pytest.raises(ValueError, match="check digits"):
        replace(good, nav=good.nav[:-1] + "0")
    with pytest.raises(ValueError, match="iuv"):
        replace(good, iuv="01000000000000999")
    with pytest.raises(ValueError, match="two decimal"):
        replace(good, amount=Decimal("1.001"))
    with pytest.raises(ValueError, match="between"):
        replace(good, amount=Decimal("0"))
    with pytest.raises(ValueError, match="Decimal"):
        replace(good, amount=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="instalment"):
        replace(good, instalment=0)
    with pytest.raises(ValueError, match="11 digits"):
        NoticeCreditor(fiscal_code="1234", name="x")
    with pytest.raises(ValueError, match="at least one"):
        make_context(options=())
    with pytest.raises(ValueError, match="single-payment"):
        make_context(options=(make_option(1), make_option(2)))
    with pytest.raises(ValueError, match="repeat"):
        make_context(options=(make_option(1, instalment=1), make_option(2, instalment=1)))
    with pytest.raises(ValueError, match="own NAV"):
        make_context(options=(make_option(1), make_option(1, instalment=1)))
    with pytest.raises(ValueError, match="language"):
        make_context(language="xx")
    assert make_option(amount=Decimal("7")).amount.as_tuple().exponent == -2
