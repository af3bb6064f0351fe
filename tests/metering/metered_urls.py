"""A tiny "AI" app metered with Tollgate, for the decorator and mixin tests."""

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.tenancy import TenantMixin
from metering.decorators import MeteredViewMixin, metered

CALLS = []


@csrf_exempt
@metered("chat", estimate=lambda request: {"input_tokens": 1000, "output_tokens": 1000})
def chat(request):
    CALLS.append("chat")
    if request.GET.get("fail") == "raise":
        raise RuntimeError("model crashed")
    if request.GET.get("fail") == "status":
        return JsonResponse({"error": "upstream"}, status=502)
    return JsonResponse({"answer": "hi", "usage": {"input_tokens": 300, "output_tokens": 20}})


class ChatApi(MeteredViewMixin, TenantMixin, APIView):
    permission_classes = [IsAuthenticated]
    metered_service = "chat"

    def post(self, request):
        CALLS.append("chat-api")
        return Response({"answer": "hi", "usage": {"input_tokens": 100, "output_tokens": 10}})


urlpatterns = [path("chat/", chat), path("chat-api/", ChatApi.as_view())]
