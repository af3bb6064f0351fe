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
WORST_CASE = {"input_tokens": 1000, "output_tokens": 1000}


def _test_answer(request):
    CALLS.append("test-response")
    return JsonResponse({"answer": "simulated", "usage": {"input_tokens": 7, "output_tokens": 3}})


@csrf_exempt
@metered("chat", estimate=WORST_CASE, test_response=_test_answer)
def chat(request):
    CALLS.append("chat")
    if request.GET.get("fail") == "raise":
        raise RuntimeError("model crashed")
    if request.GET.get("fail") == "status":
        return JsonResponse({"error": "upstream"}, status=502)
    return JsonResponse({"answer": "hi", "usage": {"input_tokens": 300, "output_tokens": 20}})


@csrf_exempt
@metered("chat", estimate=lambda request: {"input_tokens": 0, "output_tokens": 0})
def free_estimate(request):
    CALLS.append("free")
    return JsonResponse({"usage": {"input_tokens": 10, "output_tokens": 10}})


@csrf_exempt
@metered("chat", estimate=WORST_CASE, hold_seconds=3600)
def live_only(request):
    CALLS.append("live-only")
    return JsonResponse({"usage": {"input_tokens": 1, "output_tokens": 1}})


class ChatApi(MeteredViewMixin, TenantMixin, APIView):
    permission_classes = [IsAuthenticated]
    metered_service = "chat"
    metered_max_quantities = {"input_tokens": 500, "output_tokens": 500}

    def post(self, request):
        CALLS.append("chat-api")
        return Response({"answer": "hi", "usage": {"input_tokens": 100, "output_tokens": 10}})

    def metered_test_response(self, request):
        CALLS.append("chat-api-test")
        return Response({"answer": "simulated", "usage": {"input_tokens": 1, "output_tokens": 1}})


def _broken_actual(request, response):
    raise RuntimeError("the usage report could not be read")


@csrf_exempt
@metered("chat", estimate=WORST_CASE, actual=_broken_actual)
def broken_report(request):
    CALLS.append("broken")
    return JsonResponse({"answer": "hi"})


class DefersToResponseApi(ChatApi):
    def metered_actual(self, request, response):
        return None  # "read it from the response"


urlpatterns = [
    path("broken-report/", broken_report),
    path("defers/", DefersToResponseApi.as_view()),
    path("chat/", chat),
    path("free/", free_estimate),
    path("live-only/", live_only),
    path("chat-api/", ChatApi.as_view()),
]
