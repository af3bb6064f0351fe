"""Streamed CSV downloads: each row is encoded as it is produced, so memory stays flat however many
rows there are (callers pass a generator over `.iterator()`).

Every download goes through here, so this is where CSV injection is stopped: a spreadsheet runs a
cell that starts with `=`, `+`, `-`, `@`, a tab, a carriage return or another control character as
a formula. Such a string cell gets a leading `'`, which spreadsheets read as "this is text". Strings
that are only a plain decimal number (our amounts as strings, e.g. "-0.5") and non-string values
(ints, Decimals, dates: never user text) are written as they are, so numbers stay numbers. Every
cell is quoted, so a spreadsheet whose list separator is `;` cannot split one cell into two.
"""

import csv
import re
import unicodedata
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from django.http import StreamingHttpResponse

# Full-width forms too: Excel turns them into formulas in some East Asian locales.
FORMULA_STARTS = frozenset("=+-@\t\r＝＋－＠")
PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class _Echo:
    """A file-like object whose write() hands the line back, so csv.writer encodes without buffering."""

    def write(self, value: str) -> str:
        return value


def csv_cell(value):
    """`value` as it may safely go into a cell: formula-like strings prefixed with `'`."""
    if not isinstance(value, str) or not value or PLAIN_NUMBER.fullmatch(value):
        return value
    if value[0] in FORMULA_STARTS or unicodedata.category(value[0]) == "Cc":
        return "'" + value
    return value


def attachment_disposition(filename: str) -> str:
    """A Content-Disposition header for any file name: an ASCII fallback (letters, digits, `.`, `_`,
    `-`) that every client reads, plus the full name as RFC 5987 `filename*` when it differs."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    fallback = re.sub(r"[^A-Za-z0-9._]+", "-", ascii_name).strip("-") or "download"
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        printable = "".join(ch for ch in filename if unicodedata.category(ch)[0] != "C")
        header += f"; filename*=UTF-8''{quote(printable, safe='')}"
    return header


def csv_stream_response(header: Sequence[str], rows: Iterable[Sequence], *, filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo(), quoting=csv.QUOTE_ALL)

    def lines():
        yield writer.writerow([csv_cell(value) for value in header])
        for row in rows:
            yield writer.writerow([csv_cell(value) for value in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = attachment_disposition(filename)
    response["Cache-Control"] = "no-store"
    return response
