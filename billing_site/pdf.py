"""The layout every document Tollgate prints shares (docs/statements.md): an A4 page, the DejaVu fonts
kept beside this module (embedded and subset, so any Latin, Greek or Cyrillic name prints; fpdf2's
built-in fonts know Latin-1 only), the seller's block, a title, parties, tables of amounts and a footer.
Pure Python (fpdf2): nothing to install on the machine."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from fpdf import FPDF
from fpdf.enums import XPos, YPos

# fontTools reports every table it prunes while subsetting a font, at INFO, for every document.
logging.getLogger("fontTools").setLevel(logging.WARNING)

FONTS_DIR = Path(__file__).resolve().parent / "fonts"
FONT = "DejaVu"
INK = (33, 37, 41)
MUTED = (108, 117, 125)
RULE = (206, 212, 218)
# fpdf2 writes the page count wherever its alias appears on a page, customers' text included: with the
# default `{nb}`, a billing name "Acme {nb}" printed as "Acme 1". Control characters, which no customer
# text may hold (billing_site/validators.py); two of them reserve room for two digits.
PAGES_ALIAS = "\x1f\x1f"


@dataclass(frozen=True)
class Party:
    """Who a document is from or to, as printed: a name, then lines (address, tax id, email)."""

    name: str
    lines: tuple[str, ...] = ()


def party_stored(party: Party) -> dict[str, object]:
    """A party as a document stores it when issued (JSON), so a later change of details never alters it."""
    return {"name": party.name, "lines": list(party.lines)}


def party_loaded(stored: dict[str, object]) -> Party:
    lines = stored.get("lines") or []
    return Party(name=str(stored.get("name", "")), lines=tuple(str(line) for line in lines) if isinstance(lines, list) else ())


def billed_to_party(*, name: str, billing_name: str, billing_address: str, tax_id: str) -> Party:
    """The customer as documents print them: the billing name (else the organization's name), the
    address's lines, then the tax id."""
    lines = [line.strip() for line in billing_address.splitlines() if line.strip()]
    if tax_id:
        lines.append(f"Tax id: {tax_id}")
    return Party(name=billing_name or name, lines=tuple(lines))


def seller() -> Party:
    """The seller, from settings (SELLER_NAME, SELLER_ADDRESS with `\\n` between lines, SELLER_TAX_ID, SELLER_EMAIL)."""
    address = [line.strip() for line in settings.SELLER_ADDRESS.replace("\\n", "\n").splitlines() if line.strip()]
    extra = [f"Tax id: {settings.SELLER_TAX_ID}"] if settings.SELLER_TAX_ID else []
    extra += [settings.SELLER_EMAIL] if settings.SELLER_EMAIL else []
    return Party(name=settings.SELLER_NAME, lines=(*address, *extra))


class Document(FPDF):
    """One printed document. Build it with the methods below, then `bytes()` it."""

    def __init__(self, *, title: str, subject: str, issuer: Party) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.add_font(FONT, "", str(FONTS_DIR / "DejaVuSans.ttf"))
        self.add_font(FONT, "B", str(FONTS_DIR / "DejaVuSans-Bold.ttf"))
        self.set_title(title)
        self.set_subject(subject)
        self.issuer = issuer  # the seller as the document was issued by them
        self.set_author(issuer.name)
        self.set_creator("Tollgate")
        self.set_margins(18, 18, 18)
        self.set_auto_page_break(auto=True, margin=20)
        self._footer_text = ""
        self.alias_nb_pages(PAGES_ALIAS, align="R")
        self.add_page()
        self.set_text_color(*INK)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font(FONT, "", 7.5)
        self.set_text_color(*MUTED)
        self.cell(0, 5, self._footer_text, align="L")
        self.cell(0, 5, f"Page {self.page_no()} of {PAGES_ALIAS}", align="R")
        self.set_text_color(*INK)

    def footer_set(self, text: str) -> None:
        self._footer_text = text

    def heading(self, title: str, *, facts: Sequence[tuple[str, str]] = ()) -> None:
        """The seller's name at the top left, the document's title at the top right, then `facts`
        (label, value) right-aligned under the title: its number, date, period."""
        top = self.get_y()
        self.set_font(FONT, "B", 15)
        self.cell(self.epw / 2, 9, self.issuer.name, new_x=XPos.RIGHT, new_y=YPos.TOP)
        self.cell(self.epw / 2, 9, title, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font(FONT, "", 9)
        for label, value in facts:
            self.set_x(self.l_margin + self.epw / 2)
            self.set_text_color(*MUTED)
            self.cell(self.epw / 4, 5, label, align="R")
            self.set_text_color(*INK)
            self.cell(self.epw / 4, 5, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_y(max(self.get_y(), top + 20) + 4)

    def parties(self, left: tuple[str, Party], right: tuple[str, Party]) -> None:
        """Two blocks side by side: (caption, party), e.g. ("From", seller) and ("Billed to", customer)."""
        top = self.get_y()
        bottom = top
        for index, (caption, party) in enumerate((left, right)):
            x = self.l_margin + index * self.epw / 2
            self.set_xy(x, top)
            self.set_font(FONT, "B", 8)
            self.set_text_color(*MUTED)
            self.cell(self.epw / 2 - 4, 5, caption.upper(), new_x=XPos.LEFT, new_y=YPos.NEXT)
            self.set_text_color(*INK)
            self.set_font(FONT, "B", 10)
            self.multi_cell(self.epw / 2 - 4, 5, party.name, new_x=XPos.LEFT, new_y=YPos.NEXT)
            self.set_font(FONT, "", 9)
            for line in party.lines:
                # An address may hold a pasted tab (billing_site/validators.py), which the font has no glyph for.
                self.multi_cell(self.epw / 2 - 4, 4.6, line.replace("\t", " "), new_x=XPos.LEFT, new_y=YPos.NEXT)
            bottom = max(bottom, self.get_y())
        self.set_xy(self.l_margin, bottom + 6)

    def section(self, title: str) -> None:
        self.ln(2)
        self.set_font(FONT, "B", 11)
        self.cell(0, 7, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_draw_color(*RULE)
        self.line(self.l_margin, self.get_y(), self.l_margin + self.epw, self.get_y())
        self.ln(1.5)

    def details(self, rows: Sequence[tuple[str, str]]) -> None:
        """Label and value rows, the label muted on the left and the value beside it, wrapped when long
        (a provider's reference, an address)."""
        self.set_font(FONT, "", 9.5)
        for label, value in rows:
            self.set_text_color(*MUTED)
            self.cell(self.epw * 0.3, 6, label)
            self.set_text_color(*INK)
            self.multi_cell(self.epw * 0.7, 6, value, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def amounts(self, rows: Sequence[tuple[str, str]], *, total: tuple[str, str] | None = None) -> None:
        """Label and amount rows (the amount right-aligned), then an optional bold total row."""
        self.set_font(FONT, "", 9.5)
        for label, amount in rows:
            self.cell(self.epw * 0.7, 6, label)
            self.cell(self.epw * 0.3, 6, amount, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if total is not None:
            self.set_draw_color(*RULE)
            self.line(self.l_margin + self.epw * 0.55, self.get_y(), self.l_margin + self.epw, self.get_y())
            self.set_font(FONT, "B", 10)
            self.cell(self.epw * 0.7, 7, total[0])
            self.cell(self.epw * 0.3, 7, total[1], align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def columns(
        self, header: Sequence[str], rows: Sequence[Sequence[str]], *, widths: Sequence[float], right: Sequence[bool]
    ) -> None:
        """A plain table: a bold header, then rows; `widths` are fractions of the page's width and
        `right` says which columns are right-aligned (amounts)."""
        self.set_font(FONT, "B", 8.5)
        self.set_text_color(*MUTED)
        for text, width, align_right in zip(header, widths, right, strict=True):
            self.cell(self.epw * width, 6, text, align="R" if align_right else "L")
        self.ln(6)
        self.set_text_color(*INK)
        self.set_font(FONT, "", 9)
        for row in rows:
            for text, width, align_right in zip(row, widths, right, strict=True):
                self.cell(self.epw * width, 5.6, text, align="R" if align_right else "L")
            self.ln(5.6)

    def paragraph(self, text: str, *, muted: bool = False) -> None:
        self.ln(1)
        self.set_font(FONT, "", 8.5)
        if muted:
            self.set_text_color(*MUTED)
        self.multi_cell(0, 4.5, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_text_color(*INK)

    def __bytes__(self) -> bytes:
        return bytes(self.output())


def document_date(moment: datetime) -> str:
    """A date as documents print it: `2 December 2026` (UTC)."""
    return f"{moment.day} {moment:%B %Y}"
