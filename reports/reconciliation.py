"""Reconciliation reports: the daily report of an EC and the prospetto riscossioni, in HTML, CSV and PDF.

Figures come from ``store.report_data``; ``reconciliation_context`` and ``prospetto_context`` turn them into
typed contexts where every text is already worded and formatted and the chart is already laid out; the
renderers only place them (jinja2 with autoescape and StrictUndefined for HTML and the inline SVG chart, the
``csv`` module, reportlab tables). Writing the files is ``write_report_files``, a separate step.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from store.report_data import (
    ANOMALY_LABELS,
    DayMoney,
    LabelGroup,
    LabelItem,
    ProspettoData,
    ReconciliationData,
)

ROME = ZoneInfo("Europe/Rome")
TEMPLATES = Path(__file__).resolve().parent / "templates"

# What each label means and what an operator does about it (fixed texts, DOMAIN §10)
LABEL_TITLES: dict[str, str] = {
    "RT_IUF_TES": "Pagato, rendicontato e incassato",
    "RT_TES": "Pagato e incassato con riversamento singolo",
    "RT_IUF": "Pagato e rendicontato",
    "RT_NO_IUF": "Pagato, non ancora rendicontato",
    "IUV_NO_RT": "Rendicontato senza ricevuta",
    "IUF_NO_TES": "Flusso senza riversamento in tesoreria",
    "IUF_TES_DIV_IMP": "Riversamento di importo diverso dal flusso",
    "TES_NO_IUF_OR_IUV": "Accredito che indica un flusso o uno IUV sconosciuto",
    "TES_NO_MATCH": "Accredito senza causale pagoPA",
    "DOPPI": "IUV rendicontato piu' volte",
}
LABEL_ACTIONS: dict[str, str] = {
    "RT_NO_IUF": "Attendere il flusso di rendicontazione (entro D+2). Se manca da piu' di tre giorni "
    "lavorativi, scaricare di nuovo i flussi e, se ancora assente, segnalarlo al PSP.",
    "IUV_NO_RT": "Recuperare la ricevuta da pagoPA (flusso ricevute). Per le righe con esito 8 o 9 "
    "verificare la chiusura del debito senza RPT.",
    "IUF_NO_TES": "Cercare il riversamento nel giornale di cassa; se non arriva entro il giorno lavorativo "
    "successivo al regolamento, sollecitare il PSP indicando l'identificativo del flusso.",
    "IUF_TES_DIV_IMP": "Confrontare il totale del flusso con gli accrediti: attendere eventuali riversamenti "
    "integrativi, verificare gli storni e chiedere al PSP la differenza.",
    "TES_NO_IUF_OR_IUV": "Verificare la causale con la tesoreria: scaricare il flusso indicato se manca, "
    "oppure correggere lo IUV; l'accredito resta sospeso fino ad allora.",
    "TES_NO_MATCH": "Abbinare l'accredito a un flusso (vedi i suggerimenti) oppure segnarlo come accredito "
    "non pagoPA.",
    "DOPPI": "Verificare il doppio pagamento con il PSP e avviare il rimborso al debitore per l'importo "
    "in eccesso.",
}
SUBJECTS = {"collection": "riscossione", "line": "riga di flusso", "flow": "flusso", "movement": "movimento"}
MATCH_STATES = {
    "UNMATCHED": "non abbinato",
    "PARTIAL": "abbinato in parte",
    "PENDING": "da elaborare",
    "MATCHED": "abbinato",
    "NOT_PAGOPA": "non pagoPA",
    "REVERSED": "stornato",
}
CHART_CLASSES = (
    ("cashed", "Incassato"),
    ("reported", "Rendicontato, non incassato"),
    ("paid", "Pagato, non rendicontato"),
)


def format_eur(amount: Decimal | None) -> str:
    """Euros the Italian way with the sign kept, e.g. ``-1.234,56 €``; empty for None."""
    if amount is None:
        return ""
    sign = "-" if amount < 0 else ""
    whole, cents = f"{abs(amount):.2f}".split(".")
    return f"{sign}{int(whole):,}".replace(",", ".") + f",{cents} €"


def format_day(day: date | None) -> str:
    """A day as dd/mm/yyyy; empty for None."""
    return day.strftime("%d/%m/%Y") if day else ""


def format_count(n: int) -> str:
    """A count with Italian thousands separators."""
    return f"{n:,}".replace(",", ".")


# ---------------------------------------------------------------------------------------------- contexts


@dataclass(frozen=True)
class Total:
    """One headline figure."""

    key: str
    title: str
    count: str
    amount: str
    raw_count: int
    raw_amount: Decimal


@dataclass(frozen=True)
class Table:
    """A table as the reader sees it: a title, a note, column names and rows of texts."""

    key: str
    title: str
    note: str
    action: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    more: str


@dataclass(frozen=True)
class Bar:
    """One rectangle of the chart (SVG coordinates: y grows downwards)."""

    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True)
class ChartText:
    """A text of the chart."""

    x: float
    y: float
    text: str
    anchor: str


@dataclass(frozen=True)
class GridLine:
    """A horizontal line of the chart."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class LegendEntry:
    """A legend swatch and its text."""

    x: float
    y: float
    box_y: float
    text_x: float
    css: str
    text: str


@dataclass(frozen=True)
class Chart:
    """Money by state over the last days, laid out for SVG and for the PDF drawing."""

    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    texts: tuple[ChartText, ...]
    grid: tuple[GridLine, ...]
    legend: tuple[LegendEntry, ...]


@dataclass(frozen=True)
class CsvRow:
    """One item of the report as a CSV row (ISO dates, amounts with a dot)."""

    section: str
    label: str
    subject: str
    subject_id: str
    iuv: str
    iur: str
    transfer_index: str
    id_flusso: str
    movement_id: str
    day: str
    amount: str
    party: str
    text: str
    reference: str
    note: str


CSV_HEADER = (
    "sezione",
    "etichetta",
    "soggetto",
    "id",
    "iuv",
    "iur",
    "indice",
    "id_flusso",
    "movimento",
    "data",
    "importo",
    "debitore_ordinante",
    "descrizione",
    "riferimento",
    "nota",
)


@dataclass(frozen=True)
class ReportContext:
    """The daily reconciliation report of one EC, ready to render."""

    title: str
    subtitle: str
    generated: str
    id_dominio: str
    report_date: date
    totals: tuple[Total, ...]
    chart: Chart
    unexplained: Table
    anomalies: tuple[Table, ...]
    suggestions: Table
    label_summary: Table
    csv_rows: tuple[CsvRow, ...]


def _chart(days: tuple[DayMoney, ...], *, width: int = 760, height: int = 280) -> Chart:
    left, right, top, bottom = 90.0, 10.0, 16.0, 64.0
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((d.cashed + d.reported + d.paid for d in days), default=Decimal(0)) or Decimal(1)
    slot = plot_w / max(len(days), 1)
    bar_w = round(slot * 0.7, 2)
    step = max(1, -(-len(days) // 16))  # at most 16 day labels
    bars: list[Bar] = []
    texts: list[ChartText] = []
    for i, d in enumerate(days):
        x = round(left + i * slot + (slot - bar_w) / 2, 2)
        base = top + plot_h
        for css, amount, name in (
            ("cashed", d.cashed, "incassato"),
            ("reported", d.reported, "rendicontato"),
            ("paid", d.paid, "pagato, non rendicontato"),
        ):
            if amount <= 0:
                continue
            h = round(float(amount / peak) * plot_h, 2)
            base -= h
            bars.append(
                Bar(x, round(base, 2), bar_w, h, css, f"{format_day(d.day)}: {name} {format_eur(amount)}")
            )
        if i % step == 0:
            texts.append(
                ChartText(round(x + bar_w / 2, 2), top + plot_h + 16, d.day.strftime("%d/%m"), "middle")
            )
    grid = []
    empty = not bars
    for q in range(5):
        y = round(top + plot_h - plot_h * q / 4, 2)
        grid.append(GridLine(left, y, width - right, y))
        if not empty or q == 0:
            texts.append(
                ChartText(left - 6, y + 4, format_eur(peak * q / 4 if not empty else Decimal(0)), "end")
            )
    legend = tuple(
        LegendEntry(left + i * 220, height - 18.0, height - 26.0, left + i * 220 + 14, css, text)
        for i, (css, text) in enumerate(CHART_CLASSES)
    )
    first, last = (format_day(days[0].day), format_day(days[-1].day)) if days else ("", "")
    return Chart(
        title=f"Importi pagati per giorno e stato attuale, dal {first} al {last}",
        width=width,
        height=height,
        bars=tuple(bars),
        texts=tuple(texts),
        grid=tuple(grid),
        legend=legend,
    )


def _item_row(item: LabelItem) -> tuple[str, ...]:
    ids = " / ".join(
        x
        for x in (
            item.iuv or "",
            item.iur or "",
            str(item.transfer_index) if item.transfer_index is not None else "",
        )
        if x
    )
    return (
        f"{SUBJECTS.get(item.subject, item.subject)} {item.subject_id}",
        ids,
        item.id_flusso or "",
        format_day(item.day),
        format_eur(item.amount),
        item.debtor or "",
        item.text or "",
        item.reference or "",
    )


def _more(shown: int, count: int) -> str:
    return f"Mostrati {format_count(shown)} elementi su {format_count(count)}." if count > shown else ""


def _anomaly_table(group: LabelGroup) -> Table:
    return Table(
        key=group.label,
        title=f"{group.label} - {LABEL_TITLES.get(group.label, group.label)}",
        note=f"Elementi: {format_count(group.count)}; totale {format_eur(group.total)}",
        action=LABEL_ACTIONS.get(group.label, ""),
        columns=(
            "Soggetto",
            "IUV / IUR / indice",
            "Flusso",
            "Data",
            "Importo",
            "Debitore / ordinante",
            "Descrizione / causale",
            "Riferimento",
        ),
        rows=tuple(_item_row(i) for i in group.items),
        more=_more(len(group.items), group.count),
    )


def _csv_item(section: str, label: str, item: LabelItem, note: str) -> CsvRow:
    return CsvRow(
        section,
        label,
        item.subject,
        str(item.subject_id),
        item.iuv or "",
        item.iur or "",
        "" if item.transfer_index is None else str(item.transfer_index),
        item.id_flusso or "",
        "" if item.movement_id is None else str(item.movement_id),
        item.day.isoformat() if item.day else "",
        "" if item.amount is None else f"{item.amount:.2f}",
        item.debtor or "",
        item.text or "",
        item.reference or "",
        note,
    )


def reconciliation_context(data: ReconciliationData) -> ReportContext:
    """Word, format and lay out the daily report (pure)."""
    totals = (
        Total(
            "cashed",
            "Incassato nel giorno",
            format_count(data.cashed_on_day.count),
            format_eur(data.cashed_on_day.total),
            data.cashed_on_day.count,
            data.cashed_on_day.total,
        ),
        Total(
            "reported",
            "Rendicontato, non incassato",
            format_count(data.reported_not_cashed.count),
            format_eur(data.reported_not_cashed.total),
            data.reported_not_cashed.count,
            data.reported_not_cashed.total,
        ),
        Total(
            "paid",
            "Pagato, non rendicontato",
            format_count(data.paid_not_reported.count),
            format_eur(data.paid_not_reported.total),
            data.paid_not_reported.count,
            data.paid_not_reported.total,
        ),
        Total(
            "unexplained",
            "Denaro non spiegato",
            format_count(data.unexplained.count),
            format_eur(data.unexplained.total),
            data.unexplained.count,
            data.unexplained.total,
        ),
    )
    unexplained = Table(
        key="unexplained",
        title="Denaro non spiegato",
        note=f"Movimenti: {format_count(data.unexplained.count)}; "
        f"totale {format_eur(data.unexplained.total)}",
        action="Movimenti non abbinati o abbinati in parte, accrediti non in formato pagoPA o che indicano "
        "un flusso o uno IUV sconosciuto.",
        columns=("Movimento", "Data valuta", "Importo", "Causale", "Ordinante", "Stato", "Esito"),
        rows=tuple(
            (
                str(m.movement_id),
                format_day(m.value_date),
                format_eur(m.amount),
                m.remittance,
                m.ordering_party or "",
                ", ".join([MATCH_STATES.get(m.match_state, m.match_state), *m.labels]),
                " ".join(x for x in (m.outcome_code or "", m.outcome or "") if x),
            )
            for m in data.unexplained_items
        ),
        more=_more(len(data.unexplained_items), data.unexplained.count),
    )
    suggestions = Table(
        key="suggestions",
        title="Abbinamenti suggeriti da confermare",
        note=f"Suggerimenti aperti: {format_count(data.open_suggestions)}",
        action="Confermare o rifiutare ogni suggerimento: una conferma fa incassare il flusso alla prossima "
        "riconciliazione.",
        columns=(
            "Suggerimento",
            "Movimento",
            "Data valuta",
            "Importo",
            "Causale",
            "Flusso proposto",
            "PSP",
            "Punteggio",
            "Motivi",
        ),
        rows=tuple(
            (
                str(s.suggestion_id),
                str(s.movement_id),
                format_day(s.value_date),
                format_eur(s.amount),
                s.remittance,
                s.id_flusso,
                s.psp or "",
                f"{s.score:.2f}",
                "; ".join(s.reasons),
            )
            for s in data.suggestions
        ),
        more=_more(len(data.suggestions), data.open_suggestions),
    )
    label_summary = Table(
        key="labels",
        title="Etichette correnti",
        note="",
        action="",
        columns=("Etichetta", "Significato", "Elementi"),
        rows=tuple(
            (label, LABEL_TITLES.get(label, label), format_count(n))
            for label, n in sorted(data.label_counts.items(), key=lambda kv: _label_order(kv[0]))
        ),
        more="",
    )
    rows: list[CsvRow] = [
        CsvRow(
            "TOTALE",
            t.key,
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            data.report_date.isoformat(),
            f"{t.raw_amount:.2f}",
            "",
            t.title,
            "",
            f"{t.raw_count} elementi",
        )
        for t in totals
    ]
    for group in data.anomalies:
        rows += [
            _csv_item("ANOMALIA", group.label, item, LABEL_ACTIONS.get(group.label, ""))
            for item in group.items
        ]
    rows += [
        CsvRow(
            "NON_SPIEGATO",
            "|".join(m.labels) or m.match_state,
            "movement",
            str(m.movement_id),
            "",
            "",
            "",
            m.reference or "",
            str(m.movement_id),
            m.value_date.isoformat() if m.value_date else "",
            f"{m.amount:.2f}",
            m.ordering_party or "",
            m.remittance,
            m.outcome_code or "",
            m.outcome or "",
        )
        for m in data.unexplained_items
    ]
    rows += [
        CsvRow(
            "SUGGERIMENTO",
            "PROPOSED",
            "suggestion",
            str(s.suggestion_id),
            "",
            "",
            "",
            s.id_flusso,
            str(s.movement_id),
            s.value_date.isoformat() if s.value_date else "",
            f"{s.amount:.2f}",
            s.psp or "",
            s.remittance,
            f"{s.score:.2f}",
            "; ".join(s.reasons),
        )
        for s in data.suggestions
    ]
    return ReportContext(
        title=f"Riconciliazione del {format_day(data.report_date)}",
        subtitle=f"{data.creditor_name} ({data.id_dominio})",
        generated=f"Generato il {data.generated_at.astimezone(ROME):%d/%m/%Y alle %H:%M}; etichette, "
        f"anomalie e importi sospesi sono quelli a quell'ora.",
        id_dominio=data.id_dominio,
        report_date=data.report_date,
        totals=totals,
        chart=_chart(data.days),
        unexplained=unexplained,
        anomalies=tuple(_anomaly_table(g) for g in data.anomalies),
        suggestions=suggestions,
        label_summary=label_summary,
        csv_rows=tuple(rows),
    )


def _label_order(label: str) -> int:
    order = ("RT_IUF_TES", "RT_TES", "RT_IUF", *ANOMALY_LABELS)
    return order.index(label) if label in order else len(order)


@dataclass(frozen=True)
class ProspettoContext:
    """The prospetto riscossioni, ready to render."""

    title: str
    subtitle: str
    generated: str
    id_dominio: str
    start: date
    end: date
    table: Table
    by_code: Table
    csv_header: tuple[str, ...]
    csv_rows: tuple[tuple[str, ...], ...]


def _period_text(day: date, period: str) -> str:
    return day.strftime("%m/%Y") if period == "month" else format_day(day)


def prospetto_context(data: ProspettoData) -> ProspettoContext:
    """Word and format the prospetto riscossioni (pure)."""
    columns = (
        "Periodo",
        "Codice entrata",
        "Tipo contabilita'",
        "Codice contabilita'",
        "Riscossioni",
        "Importo",
        "Di cui incassato",
    )
    rows = tuple(
        (
            _period_text(r.period_start, data.period),
            r.revenue_code,
            r.accounting_type,
            r.accounting_code,
            format_count(r.count),
            format_eur(r.amount),
            format_eur(r.cashed),
        )
        for r in data.rows
    )
    codes: dict[tuple[str, str, str], tuple[int, Decimal, Decimal]] = {}
    for r in data.rows:
        n, amount, cashed = codes.get(
            (r.revenue_code, r.accounting_type, r.accounting_code), (0, Decimal(0), Decimal(0))
        )
        codes[(r.revenue_code, r.accounting_type, r.accounting_code)] = (
            n + r.count,
            amount + r.amount,
            cashed + r.cashed,
        )
    count = sum(r.count for r in data.rows)
    total = sum((r.amount for r in data.rows), Decimal("0.00"))
    cashed = sum((r.cashed for r in data.rows), Decimal("0.00"))
    by_code = tuple(
        (code[0], code[1], code[2], format_count(n), format_eur(a), format_eur(c))
        for code, (n, a, c) in sorted(codes.items())
    ) + (("Totale", "", "", format_count(count), format_eur(total), format_eur(cashed)),)
    per = "giorno" if data.period == "day" else "mese"
    return ProspettoContext(
        title="Prospetto riscossioni",
        subtitle=f"{data.creditor_name} ({data.id_dominio}), pagamenti dal {format_day(data.start)} al "
        f"{format_day(data.end)}, per {per} e codice contabile",
        generated=f"Generato il {data.generated_at.astimezone(ROME):%d/%m/%Y alle %H:%M}",
        id_dominio=data.id_dominio,
        start=data.start,
        end=data.end,
        table=Table("prospetto", f"Per {per}", "", "", columns, rows, ""),
        by_code=Table("codici", "Totali per codice", "", "", columns[1:], by_code, ""),
        csv_header=(
            "periodo",
            "codice_entrata",
            "tipo_contabilita",
            "codice_contabilita",
            "riscossioni",
            "importo",
            "incassato",
        ),
        csv_rows=tuple(
            (
                r.period_start.isoformat()[: 7 if data.period == "month" else 10],
                r.revenue_code,
                r.accounting_type,
                r.accounting_code,
                str(r.count),
                f"{r.amount:.2f}",
                f"{r.cashed:.2f}",
            )
            for r in data.rows
        ),
    )


# --------------------------------------------------------------------------------------------- renderers


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(ctx: ReportContext) -> str:
    """The daily report as one self-contained HTML page (inline CSS and SVG, no JavaScript)."""
    return _environment().get_template("reconciliation.html.j2").render(ctx=ctx)


def render_svg(chart: Chart) -> str:
    """The chart alone, as an SVG document."""
    return _environment().get_template("chart.svg.j2").render(chart=chart)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    # a spreadsheet would run a text cell starting with = + - @ as a formula (CSV injection)
    return "'" + value if value.startswith(_FORMULA_START) and not _is_number(value) else value


def _is_number(value: str) -> bool:
    try:
        Decimal(value)
    except ArithmeticError:
        return False
    return True


def _csv(header: tuple[str, ...], rows: object) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:  # type: ignore[attr-defined]
        writer.writerow([_cell(v) for v in row])
    return out.getvalue().encode("utf-8")


def render_csv(ctx: ReportContext) -> bytes:
    """The daily report as CSV (UTF-8, comma separated): totals, then one row per item."""
    return _csv(
        CSV_HEADER,
        (
            (
                r.section,
                r.label,
                r.subject,
                r.subject_id,
                r.iuv,
                r.iur,
                r.transfer_index,
                r.id_flusso,
                r.movement_id,
                r.day,
                r.amount,
                r.party,
                r.text,
                r.reference,
                r.note,
            )
            for r in ctx.csv_rows
        ),
    )


def render_prospetto_csv(ctx: ProspettoContext) -> bytes:
    """The prospetto riscossioni as CSV: one row per period and code."""
    return _csv(ctx.csv_header, ctx.csv_rows)


# PDF: reportlab's platypus tables; texts go into Paragraphs, whose mini-markup is escaped first.


def _pdf_text(value: str, limit: int = 400) -> str:
    clean = "".join(ch if ch.isprintable() else " " for ch in value)
    clean = clean.encode("cp1252", errors="replace").decode("cp1252")
    clean = clean if len(clean) <= limit else clean[: limit - 1] + "…"
    return xml_escape(clean)


def _pdf_story_table(
    table: Table, styles: dict[str, object], widths: list[float] | None = None
) -> list[object]:
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Spacer
    from reportlab.platypus import Table as PdfTable

    cell, head = styles["cell"], styles["head"]
    story: list[object] = [Paragraph(_pdf_text(table.title), styles["h2"])]
    for text in (table.note, table.action):
        if text:
            story.append(Paragraph(_pdf_text(text), styles["body"]))
    data = [[Paragraph(_pdf_text(c), head) for c in table.columns]]
    data += [[Paragraph(_pdf_text(v), cell) for v in row] for row in table.rows]
    if not table.rows:
        data.append([Paragraph("Nessun elemento.", cell)] + [Paragraph("", cell)] * (len(table.columns) - 1))
    pdf_table = PdfTable(data, colWidths=widths, repeatRows=1)
    pdf_table.setStyle(
        [
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
    )
    story.append(pdf_table)
    if table.more:
        story.append(Paragraph(_pdf_text(table.more), styles["body"]))
    story.append(Spacer(1, 8))
    return story


def _styles() -> dict[str, object]:
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet

    base = getSampleStyleSheet()
    return {
        "h1": base["Heading1"],
        "h2": base["Heading2"],
        "body": base["BodyText"],
        "cell": ParagraphStyle("cell", parent=base["BodyText"], fontSize=7, leading=8.5),
        "head": ParagraphStyle(
            "head", parent=base["BodyText"], fontSize=7, leading=8.5, fontName="Helvetica-Bold"
        ),
    }


_CHART_COLOURS = {"cashed": "#2e7d32", "reported": "#f9a825", "paid": "#1565c0"}


def _pdf_chart(chart: Chart) -> object:
    from reportlab.graphics.shapes import Drawing, Line, Rect, String
    from reportlab.lib import colors

    drawing = Drawing(chart.width, chart.height)
    flip = chart.height  # SVG's y grows downwards, reportlab's upwards
    for g in chart.grid:
        drawing.add(Line(g.x1, flip - g.y1, g.x2, flip - g.y2, strokeColor=colors.lightgrey, strokeWidth=0.5))
    for b in chart.bars:
        drawing.add(
            Rect(
                b.x,
                flip - b.y - b.height,
                b.width,
                b.height,
                strokeWidth=0,
                fillColor=colors.HexColor(_CHART_COLOURS[b.css]),
            )
        )
    for t in chart.texts:
        drawing.add(String(t.x, flip - t.y, _pdf_raw(t.text), fontSize=7, textAnchor=t.anchor))
    for entry in chart.legend:
        drawing.add(
            Rect(
                entry.x,
                flip - entry.box_y - 10,
                10,
                10,
                strokeWidth=0,
                fillColor=colors.HexColor(_CHART_COLOURS[entry.css]),
            )
        )
        drawing.add(String(entry.text_x, flip - entry.y, _pdf_raw(entry.text), fontSize=8))
    return drawing


def _pdf_raw(value: str) -> str:
    return value.encode("cp1252", errors="replace").decode("cp1252")


def _pdf_document(title: str, story: list[object]) -> bytes:
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=landscape(A4),
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        topMargin=12 * mm,
        bottomMargin=12 * mm,
        title=_pdf_raw(title),
        author="pagoflow",
        invariant=True,
    )
    doc.build(story)
    return buffer.getvalue()


def render_pdf(ctx: ReportContext) -> bytes:
    """The daily report as an A4 landscape PDF: totals, chart, then one table per section."""
    from reportlab.platypus import Paragraph, Spacer

    styles = _styles()
    story: list[object] = [
        Paragraph(_pdf_text(ctx.title), styles["h1"]),
        Paragraph(_pdf_text(ctx.subtitle), styles["body"]),
        Paragraph(_pdf_text(ctx.generated), styles["body"]),
        Spacer(1, 6),
    ]
    story += _pdf_story_table(
        Table(
            "totals",
            "Totali",
            "",
            "",
            ("Voce", "Elementi", "Importo"),
            tuple((t.title, t.count, t.amount) for t in ctx.totals),
            "",
        ),
        styles,
    )
    story += [Paragraph(_pdf_text(ctx.chart.title), styles["h2"]), _pdf_chart(ctx.chart), Spacer(1, 8)]
    story += _pdf_story_table(ctx.unexplained, styles)
    for table in ctx.anomalies:
        story += _pdf_story_table(table, styles)
    story += _pdf_story_table(ctx.suggestions, styles)
    story += _pdf_story_table(ctx.label_summary, styles)
    return _pdf_document(f"{ctx.title} - {ctx.subtitle}", story)


def render_prospetto_pdf(ctx: ProspettoContext) -> bytes:
    """The prospetto riscossioni as an A4 landscape PDF: per period and code, then totals per code."""
    from reportlab.platypus import Paragraph, Spacer

    styles = _styles()
    story: list[object] = [
        Paragraph(_pdf_text(ctx.title), styles["h1"]),
        Paragraph(_pdf_text(ctx.subtitle), styles["body"]),
        Paragraph(_pdf_text(ctx.generated), styles["body"]),
        Spacer(1, 6),
    ]
    story += _pdf_story_table(ctx.by_code, styles)
    story += _pdf_story_table(ctx.table, styles)
    return _pdf_document(f"{ctx.title} - {ctx.subtitle}", story)


def render_markdown(ctx: ReportContext, *, files: Mapping[str, Path]) -> str:
    """A short markdown summary for a Prefect artifact: totals, anomalies by label, where the files are."""
    lines = [
        f"# {ctx.title}",
        "",
        f"**{ctx.subtitle}**",
        "",
        "| Voce | Elementi | Importo |",
        "|---|---:|---:|",
    ]
    lines += [f"| {t.title} | {t.count} | {t.amount} |" for t in ctx.totals]
    lines += ["", "| Etichetta | Elementi | Azione |", "|---|---:|---|"]
    lines += [f"| {t.key} | {t.note} | {t.action} |" for t in ctx.anomalies]
    lines += ["", "File:", ""] + [f"- {kind}: `{path}`" for kind, path in files.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- files


def report_dir(*, work_dir: Path, id_dominio: str, report_date: date) -> Path:
    """``<work_dir>/reports/<ec>/<date>/``."""
    return work_dir / "reports" / id_dominio / report_date.isoformat()


def write_report_files(
    *, work_dir: Path, id_dominio: str, report_date: date, files: Mapping[str, bytes | str]
) -> dict[str, Path]:
    """Write rendered reports under ``<work_dir>/reports/<ec>/<date>/`` atomically; returns name → path."""
    target = report_dir(work_dir=work_dir, id_dominio=id_dominio, report_date=report_date)
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, content in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a file name: {name!r}")
        data = content.encode("utf-8") if isinstance(content, str) else content
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written[name] = (target / name).resolve()
    return written


def report_file_names(*, id_dominio: str, report_date: date) -> dict[str, str]:
    """The file name of the daily report in each format."""
    return {
        fmt: f"riconciliazione-{id_dominio}-{report_date.isoformat()}.{fmt}" for fmt in ("html", "csv", "pdf")
    }


def prospetto_file_names(*, id_dominio: str, start: date, end: date, period: str) -> dict[str, str]:
    """The file name of the prospetto riscossioni in each format."""
    stem = f"prospetto-riscossioni-{id_dominio}-{period}-{start.isoformat()}_{end.isoformat()}"
    return {fmt: f"{stem}.{fmt}" for fmt in ("csv", "pdf")}
