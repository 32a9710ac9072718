"""Benchmark: payment notice PDFs rendered per second on one core, against the 50/s target."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from PIL import Image, ImageDraw

from reports.notice import (
    NoticeContext,
    NoticeCreditor,
    NoticeDebtor,
    NoticeOption,
    render_notice_pdf,
    render_notices_pdf,
)
from rules.identifiers import build_notice

TARGET_PER_SECOND = 50.0


def _logo(directory: Path) -> str:
    path = directory / "logo.png"
    image = Image.new("RGBA", (600, 600), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 560, 560), fill=(0, 90, 170, 255))
    draw.rectangle((200, 150, 400, 450), fill=(255, 255, 255, 255))
    image.save(path)
    return str(path)


def _contexts(*, count: int, instalments: int, postal: bool, logo_path: str) -> list[NoticeContext]:
    creditor = NoticeCreditor(
        fiscal_code="77777777777",
        name="Comune di Esempio sul Naviglio",
        sector="Settore Tributi - Ufficio TARI",
        info="Piazza del Municipio 1, 20100 Esempio (MI) - tributi@comune.esempio.it",
        cbill="AB12C",
        logo_path=logo_path,
        postal_account="1234567" if postal else None,
        postal_authorisation="DB/SSIC/E 12345 del 01/01/2020" if postal else None,
    )
    progressive = 0
    contexts = []
    for i in range(count):
        options = []
        amount = Decimal("100.00") + Decimal(i) / 100
        for instalment in [None, *range(1, instalments + 1)] if instalments else [None]:
            progressive += 1
            notice = build_notice(aux_digit=3, progressive=progressive, segregation_code="01")
            share = amount if instalment is None else (amount / instalments).quantize(Decimal("0.01"))
            options.append(
                NoticeOption(
                    nav=notice.nav,
                    iuv=notice.iuv,
                    amount=share,
                    due_date=date(2025, 3, 31) + timedelta(days=90 * (instalment or 0)),
                    instalment=instalment,
                    postal=postal,
                )
            )
        contexts.append(
            NoticeContext(
                creditor=creditor,
                debtor=NoticeDebtor(
                    fiscal_code="RSSMRA80A01H501U",
                    name=f"Mario Rossi {i}",
                    address=f"Via Roma {i}, 20100 Milano (MI)",
                ),
                reason=f"TARI 2025 - Tassa sui rifiuti, utenza domestica n. {i}",
                options=tuple(options),
                document_id=f"TARI-2025-{i:06d}",
            )
        )
    return contexts


def main(argv: list[str] | None = None) -> int:
    """Render the notices one PDF each, then all in one PDF, and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--count", type=int, default=500, help="notices to render (default 500)")
    parser.add_argument(
        "--instalments", type=int, default=0, help="instalments per notice besides the single option"
    )
    parser.add_argument(
        "--postal", action="store_true", help="add the Poste slip with its data matrix to every page"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when below the target")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        contexts = _contexts(
            count=args.count, instalments=args.instalments, postal=args.postal, logo_path=_logo(Path(tmp))
        )
        render_notice_pdf(contexts[0])  # warm the logo and wording caches, as a running worker has them
        started = time.perf_counter()
        size = sum(len(render_notice_pdf(ctx)) for ctx in contexts)
        separate = time.perf_counter() - started
        started = time.perf_counter()
        combined = len(render_notices_pdf(contexts))
        together = time.perf_counter() - started
    pages = args.count * (1 + args.instalments)
    rate = args.count / separate
    verdict = "OK" if rate >= TARGET_PER_SECOND else "BELOW"
    print(
        f"notices: {args.count} ({pages} pages; instalments={args.instalments}, postal={args.postal}), 1 core"
    )
    print(
        f"  one PDF each : {separate:6.2f} s  {rate:7.1f} notices/s  (target {TARGET_PER_SECOND:.0f}/s: "
        f"{verdict})  avg {size / args.count / 1024:.1f} KiB"
    )
    together_rate = args.count / together
    print(f"  one PDF, all : {together:6.2f} s  {together_rate:7.1f} notices/s  {combined / 1024:.0f} KiB")
    return 1 if args.check and rate < TARGET_PER_SECOND else 0


if __name__ == "__main__":
    sys.exit(main())
