"""The sandbox provider's checkout page (part of the "outside world" the sandbox plays)."""

from django.core import signing
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from payments import selectors
from payments.models import PaymentStatus
from payments.providers import providers_enabled, sandbox
from payments.providers.base import Outcome


@require_http_methods(["GET", "POST"])
def sandbox_checkout(request: HttpRequest, token: str) -> HttpResponse:
    """Confirm or decline a sandbox payment. The link is signed, so only its holder can act; the
    decision reaches us like any provider's: a signed webhook, delivered by a worker. Not found
    while the sandbox is disabled."""
    if "sandbox" not in providers_enabled():
        raise Http404("Unknown checkout")
    try:
        payment_id = sandbox.checkout_payment_id(token)
    except signing.BadSignature as exc:
        raise Http404("Unknown checkout") from exc
    payment = selectors.sandbox_payment_get(payment_id=payment_id)
    if payment is None:
        raise Http404("Unknown checkout")
    if request.method == "POST" and payment.status == PaymentStatus.PENDING:
        from payments.tasks import sandbox_webhook_deliver

        outcome = Outcome.SUCCEEDED if request.POST.get("decision") == "confirm" else Outcome.FAILED
        sandbox_webhook_deliver.delay(payment.pk, str(outcome))
        return redirect(f"{request.path}?sent={outcome}")
    return render(request, "payments/sandbox_checkout.html", {"payment": payment, "sent": request.GET.get("sent")})
