"""Streamed CSV downloads: each row is encoded as it is produced, so memory stays flat however many
rows there are (callers pass a generator over `.iterator()`)."""

import csv
from collections.abc import Iterable, Sequence

from django.http import StreamingHttpResponse


class _Echo:
    """A file-like object whose write() hands the line back, so csv.writer encodes without buffering."""

    def write(self, value: str) -> str:
        return value


def csv_stream_response(header: Sequence[str], rows: Iterable[Sequence], *, filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
