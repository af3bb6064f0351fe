"""The API's two ways to page a list: page numbers (`?page=`, with `count`; the default), and, where a
view offers it, keyset cursors (`?cursor=`; `next`/`previous` only), whose every page costs what the
first does — the way through a tenant's millions of usage records (docs/contract.md §3)."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from billing_site.errors import InvalidRequest
from billing_site.keyset import Position, keyset_page

CURSOR_QUERY_PARAM = "cursor"
_OLDER, _NEWER = "o", "n"  # a cursor is the direction and a keyset Position


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


def paginated_response(
    *, request: Request, view: APIView, queryset: QuerySet[Any], serializer_class: type[serializers.BaseSerializer[Any]]
) -> Response:
    paginator = Pagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def older_cursor(position: Position) -> str:
    """The `cursor` value of the page just older than `position` (what a `next` link carries)."""
    return _OLDER + position.encode()


def wants_cursor(request: Request) -> bool:
    return CURSOR_QUERY_PARAM in request.query_params


def cursor_paginated_response(
    *, request: Request, view: APIView, queryset: QuerySet[Any], serializer_class: type[serializers.BaseSerializer[Any]]
) -> Response:
    """A keyset page of `queryset` (ordered newest first by created_at, id): `?cursor=` (empty) is the
    first page, then each answer's `next` and `previous` links carry the cursor to follow."""
    if Pagination.page_query_param in request.query_params:
        raise InvalidRequest("Use `page` or `cursor`, not both.", details={"cursor": ["Not with `page`."]})
    token = request.query_params.get(CURSOR_QUERY_PARAM, "")
    position = Position.decode(token[1:]) if token[:1] in (_OLDER, _NEWER) else None
    if token and position is None:
        raise InvalidRequest("`cursor` is not a cursor this API gave.", details={"cursor": ["Invalid cursor."]})
    size = Pagination().get_page_size(request)
    assert size is not None  # REST_FRAMEWORK["PAGE_SIZE"] is set
    page = keyset_page(
        queryset,
        before=position if token[:1] == _OLDER else None,
        after=position if token[:1] == _NEWER else None,
        size=size,
    )
    url = remove_query_param(request.build_absolute_uri(), Pagination.page_query_param)

    def link(cursor: str | None) -> str | None:
        return None if cursor is None else replace_query_param(url, CURSOR_QUERY_PARAM, cursor)

    return Response(
        {
            "next": link(older_cursor(page.older) if page.older else None),
            "previous": link(_NEWER + page.newer.encode() if page.newer else None),
            "results": serializer_class(page.rows, many=True).data,
        }
    )


CURSOR_PARAMETER = OpenApiParameter(
    CURSOR_QUERY_PARAM,
    str,
    description="Keyset pages instead of page numbers: empty for the first page, then follow `next` / `previous`. "
    "Every page costs the same at any depth; the answer has no `count`.",
)

PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number, from 1"),
    OpenApiParameter("page_size", int, description=f"Items per page (default 50, at most {Pagination.max_page_size})"),
]


def paginated(
    serializer_class: type[serializers.BaseSerializer[Any]], name: str, *, cursor: bool = False
) -> serializers.Serializer[Any]:
    """The documented shape of a page of `serializer_class` items (`cursor`: `count` only with page numbers)."""
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(required=not cursor, help_text="With page numbers only." if cursor else ""),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )
