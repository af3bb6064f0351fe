"""Auto top-up (docs/credits.md): below the threshold exactly one recharge starts, charged off-session
to the saved method; the monthly maximum holds (pending ones count); three declines in a row turn it off
and tell the owners once; a success resets the count; notifications credit once however often replayed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from django.core import mail

from payments import auto_recharge, ledger, tasks
from payments.auto_models import AutoRecharge
from payments.models import AlertDelivery, Payment, PaymentStatus, Wallet, WebhookEvent
from payments.providers import ProviderUnreachable
from tests.factories import wallet_fund
from tests.payments.auto_helpers import auto_enable, sandbox_network, stripe_card_save
from tests.payments.helpers import assert_money_invariants, wallet_of
from tests.payments.payment_helpers import assert_credited_once, post_stripe, stripe_event_body

D = Decimal
pytestmark = pytest.mark.usefixtures("eager_celery")


def due(organization) -> None:
    """What the ledger's signal does after a debit that left available below the threshold."""
    ledger.auto_recharge_due_signal.send(sender=Wallet, organization_id=organization.pk)


def run(organization) -> str | None:
    """The task body, as the signal's receiver queues it (the gate is the cache's, tested apart)."""
    return tasks.auto_recharge_run(organization.pk)


def below(organization, amount: str = "3") -> None:
    wallet_fund(organization, amount)


def auto_payments(organization) -> list[Payment]:
    return list(Payment.objects.filter(organization=organization, auto=True).order_by("pk"))


def setting(organization) -> AutoRecharge:
    return AutoRecharge.objects.get(pk=organization.pk)


# --- The wallet's copy of the threshold --------------------------------------------------------------


def test_the_wallet_carries_the_threshold_while_on_and_null_while_off(organization):
    assert wallet_of(organization).auto_recharge_below is None

    auto_enable(organization, threshold="7.50")
    assert wallet_of(organization).auto_recharge_below == D("7.50")

    auto_recharge.auto_recharge_update(
        organization_id=organization.pk,
        data=auto_recharge.AutoRechargeInput(
            enabled=False, threshold=D("7.50"), amount=D("20"), monthly_max=D("100"), provider="sandbox"
        ),
    )
    assert wallet_of(organization).auto_recharge_below is None


# --- Sandbox: the whole path ----------------------------------------------------------------------------


def test_below_the_threshold_one_sandbox_top_up_is_charged_and_credited_once(organization, django_capture_on_commit_callbacks):
    below(organization, "3")
    auto_enable(organization, threshold="5", amount="20")

    with sandbox_network() as delivered, django_capture_on_commit_callbacks(execute=True):
        assert run(organization) == PaymentStatus.PENDING
        assert run(organization) is None  # one is pending (then settled): nothing new starts

    [payment] = auto_payments(organization)
    assert len(delivered) == 1
    sent = json.loads(delivered[0].body)
    assert (sent["type"], sent["payment_id"], D(sent["amount"])) == ("payment.succeeded", payment.pk, D("20"))
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("23")
    assert setting(organization).consecutive_declines == 0
    assert_money_invariants([organization.pk])


def test_the_signal_starts_the_top_up_through_its_receiver_once_per_gate(organization, django_capture_on_commit_callbacks):
    below(organization, "3")
    auto_enable(organization, threshold="5", amount="20")

    with sandbox_network(), django_capture_on_commit_callbacks(execute=True):
        for _ in range(5):
            due(organization)

    [payment] = auto_payments(organization)
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("23")


def test_enabling_while_already_below_starts_a_top_up(organization, django_capture_on_commit_callbacks):
    below(organization, "1")

    with sandbox_network(), django_capture_on_commit_callbacks(execute=True):
        auto_enable(organization, threshold="5", amount="20")

    [payment] = auto_payments(organization)
    assert_credited_once(payment)


@pytest.mark.parametrize(
    ("balance", "enabled", "started"),
    [("5", True, False), ("4.99", True, True), ("100", True, False), ("1", False, False)],
)
def test_a_top_up_starts_only_below_the_threshold_while_on(organization, balance, enabled, started):
    wallet_fund(organization, balance)
    auto_enable(organization, threshold="5", amount="20")
    if not enabled:
        AutoRecharge.objects.filter(pk=organization.pk).update(enabled=False)

    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)

    assert (payment is not None) == started
    assert len(auto_payments(organization)) == int(started)


def test_holds_count_against_available(organization):
    wallet_fund(organization, "10")
    auto_enable(organization, threshold="5", amount="20")
    ledger.wallet_hold(organization_id=organization.pk, amount=D("6"), usage=False)  # available 4

    assert auto_recharge.auto_recharge_start(organization_id=organization.pk) is not None


def test_the_database_refuses_a_second_pending_auto_payment(organization):
    below(organization)
    auto_enable(organization)
    auto_recharge.auto_recharge_start(organization_id=organization.pk)

    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Payment.objects.create(organization=organization, provider="sandbox", amount=D("20"), currency="USD", auto=True)


# --- Declines ----------------------------------------------------------------------------------------------


def _decline(organization) -> Payment:
    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    assert payment is not None
    return auto_recharge.auto_recharge_charge(payment_id=payment.pk)


def test_three_declines_in_a_row_turn_it_off_and_tell_the_owners_once(
    organization, owner, hook_server, settings, django_capture_on_commit_callbacks
):
    below(organization)
    auto_enable(organization, payment_method="pm_sandbox_decline")
    server = hook_server()
    Wallet.objects.filter(pk=organization.pk).update(alert_webhook_url=server.url())
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True

    with django_capture_on_commit_callbacks(execute=True):
        for expected in (1, 2):
            assert _decline(organization).status == PaymentStatus.FAILED
            assert (setting(organization).consecutive_declines, setting(organization).enabled) == (expected, True)
            assert mail.outbox == []
        assert _decline(organization).status == PaymentStatus.FAILED
        # Off now: nothing starts, nothing more is sent.
        assert auto_recharge.auto_recharge_start(organization_id=organization.pk) is None
        due(organization)

    off = setting(organization)
    assert (off.enabled, off.consecutive_declines) == (False, 3)
    assert off.disabled_reason
    assert wallet_of(organization).auto_recharge_below is None
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [owner.email]
    assert "auto top-up is off" in mail.outbox[0].subject
    assert [json.loads(r.body)["type"] for r in server.requests] == ["auto_recharge.off"]
    assert "Tollgate-Signature" in server.requests[0].headers
    assert AlertDelivery.objects.get().kind == "auto_recharge.off"
    assert [p.status for p in auto_payments(organization)] == [PaymentStatus.FAILED] * 3
    assert wallet_of(organization).balance == D("3")


def test_a_success_in_between_resets_the_count(organization, django_capture_on_commit_callbacks):
    below(organization)
    auto_enable(organization, payment_method="pm_sandbox_decline", monthly_max="1000")
    _decline(organization)
    _decline(organization)
    assert setting(organization).consecutive_declines == 2

    auto_enable(organization, payment_method="pm_sandbox_ok", monthly_max="1000")  # still on: the count stays
    assert setting(organization).consecutive_declines == 2
    with sandbox_network(), django_capture_on_commit_callbacks(execute=True):
        run(organization)
    assert setting(organization).consecutive_declines == 0
    wallet_fund(organization, "-20")  # spent again: below the threshold

    auto_enable(organization, payment_method="pm_sandbox_decline", monthly_max="1000")
    _decline(organization)
    _decline(organization)
    assert (setting(organization).consecutive_declines, setting(organization).enabled) == (2, True)
    assert mail.outbox == []


def test_turning_it_on_again_clears_the_count_and_the_reason(organization):
    below(organization)
    auto_enable(organization, payment_method="pm_sandbox_decline")
    for _ in range(3):
        _decline(organization)
    assert not setting(organization).enabled

    auto_enable(organization, payment_method="pm_sandbox_ok")

    on = setting(organization)
    assert (on.enabled, on.consecutive_declines, on.disabled_reason) == (True, 0, "")
    assert wallet_of(organization).auto_recharge_below == D("5")


def test_a_decline_recorded_twice_counts_once(organization):
    below(organization)
    auto_enable(organization, payment_method="pm_sandbox_decline")
    payment = _decline(organization)

    auto_recharge.auto_recharge_declined(payment_id=payment.pk, reason="again")
    auto_recharge.auto_recharge_charge(payment_id=payment.pk)

    assert setting(organization).consecutive_declines == 1


def test_a_top_up_turned_off_before_its_charge_is_canceled_uncharged(organization):
    below(organization)
    auto_enable(organization)
    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    AutoRecharge.objects.filter(pk=organization.pk).update(enabled=False)

    with sandbox_network() as delivered:
        charged = auto_recharge.auto_recharge_charge(payment_id=payment.pk)

    assert charged.status == PaymentStatus.CANCELED
    assert delivered == []


# --- The monthly maximum ---------------------------------------------------------------------------------


def test_the_monthly_maximum_counts_pending_and_succeeded_and_resets_next_month(organization):
    below(organization)
    auto_enable(organization, threshold="5", amount="20", monthly_max="50")
    march = datetime(2026, 3, 10, 12, tzinfo=UTC)

    first = auto_recharge.auto_recharge_start(organization_id=organization.pk, now=march)
    Payment.objects.filter(pk=first.pk).update(status=PaymentStatus.SUCCEEDED)  # charged, not credited: still below
    second = auto_recharge.auto_recharge_start(organization_id=organization.pk, now=march)
    assert second is not None
    # 20 succeeded + 20 pending + 20 would be 60 > 50: held back, and so is anything while one is pending.
    Payment.objects.filter(pk=second.pk).update(status=PaymentStatus.SUCCEEDED)
    assert auto_recharge.auto_recharge_start(organization_id=organization.pk, now=march) is None
    assert auto_recharge.auto_recharge_spent(organization_id=organization.pk, now=march) == D("40")

    # Failed and canceled ones do not count; the last second of March is still March.
    last_second = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
    assert auto_recharge.auto_recharge_start(organization_id=organization.pk, now=last_second) is None

    april = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    assert auto_recharge.auto_recharge_spent(organization_id=organization.pk, now=april) == 0
    third = auto_recharge.auto_recharge_start(organization_id=organization.pk, now=april)
    assert third is not None and third.created_at == april
    assert sum((Fraction(p.amount) for p in auto_payments(organization)), Fraction(0)) == Fraction(60)


def test_pending_counts_against_the_maximum(organization):
    below(organization)
    auto_enable(organization, threshold="5", amount="30", monthly_max="50")
    pending = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    assert pending is not None

    # Even if the uniqueness rule were gone, a second 30 on top of 30 pending passes 50.
    assert auto_recharge.auto_recharge_spent(organization_id=organization.pk) == D("30")
    Payment.objects.filter(pk=pending.pk).update(status=PaymentStatus.FAILED)
    assert auto_recharge.auto_recharge_start(organization_id=organization.pk) is not None


def test_refunded_top_ups_still_count(organization):
    below(organization)
    auto_enable(organization, threshold="5", amount="30", monthly_max="50")
    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    Payment.objects.filter(pk=payment.pk).update(status=PaymentStatus.REFUNDED)

    assert auto_recharge.auto_recharge_start(organization_id=organization.pk) is None


def test_december_rolls_over_to_january():
    start, end = auto_recharge.month_bounds(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


# --- Stripe: off-session PaymentIntent, settled by payment_intent.succeeded -------------------------------


def test_stripe_charges_off_session_with_the_saved_card(organization, fake_stripe):
    below(organization)
    stripe_card_save(organization)
    auto_enable(organization, provider="stripe", payment_method=None, amount="20.50")

    assert run(organization) == PaymentStatus.PENDING

    [payment] = auto_payments(organization)
    [request] = fake_stripe.intent_requests()
    assert request.headers["Authorization"].startswith("Bearer sk_test_")
    assert request.headers["Idempotency-Key"] == f"tollgate-auto-{payment.pk}"
    params = request.params
    assert (params["amount"], params["currency"], params["customer"], params["payment_method"]) == (
        "2050",
        "usd",
        "cus_fake_1",
        "pm_card_visa",
    )
    assert (params["off_session"], params["confirm"]) == ("true", "true")
    assert (params["metadata[payment_id]"], params["metadata[tollgate_auto]"]) == (str(payment.pk), "true")
    assert payment.provider_reference == fake_stripe.charges[0]["id"]
    assert payment.status == PaymentStatus.PENDING  # the notification settles it
    assert wallet_of(organization).balance == D("3")


def _intent_succeeded_body(intent: dict, event_id: str) -> bytes:
    return stripe_event_body("payment_intent.succeeded", intent, event_id=event_id)


def test_payment_intent_succeeded_credits_once_however_often_replayed(
    api_client, organization, fake_stripe, django_capture_on_commit_callbacks
):
    below(organization)
    stripe_card_save(organization)
    auto_enable(organization, provider="stripe", payment_method=None)
    run(organization)
    [payment] = auto_payments(organization)
    body = _intent_succeeded_body(fake_stripe.charges[0], "evt_auto_1")

    with django_capture_on_commit_callbacks(execute=True):
        first = post_stripe(api_client, body)
        second = post_stripe(api_client, body)
        other = post_stripe(api_client, _intent_succeeded_body(fake_stripe.charges[0], "evt_auto_2"))

    assert [r.status_code for r in (first, second, other)] == [200, 200, 200]
    assert (first.json()["duplicate"], second.json()["duplicate"], other.json()["duplicate"]) == (False, True, False)
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("23")
    assert_money_invariants([organization.pk])


def test_a_sandbox_replay_of_an_auto_top_up_credits_once(api_client, organization, django_capture_on_commit_callbacks):
    below(organization)
    auto_enable(organization)
    with sandbox_network() as delivered, django_capture_on_commit_callbacks(execute=True):
        run(organization)
    [payment] = auto_payments(organization)

    with django_capture_on_commit_callbacks(execute=True):
        replay = api_client.post(
            "/api/v1/payments/webhooks/sandbox/",
            data=delivered[0].body,
            content_type="application/json",
            HTTP_TOLLGATE_SIGNATURE=delivered[0].headers["Tollgate-Signature"],
        )

    assert replay.json()["duplicate"] is True
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("23")


@pytest.mark.parametrize(
    "mismatch",
    [
        {"amount_received": 2001},
        {"currency": "eur"},
        {"metadata": {"payment_id": "999999", "tollgate_auto": "true"}},
        {"id": "pi_forged"},
    ],
    ids=["amount", "currency", "payment", "intent id"],
)
def test_a_payment_intent_event_not_matching_the_auto_payment_is_refused(
    api_client, organization, fake_stripe, mismatch, django_capture_on_commit_callbacks
):
    below(organization)
    stripe_card_save(organization)
    auto_enable(organization, provider="stripe", payment_method=None)
    run(organization)
    intent = {**fake_stripe.charges[0], **mismatch}

    with django_capture_on_commit_callbacks(execute=True):
        response = post_stripe(api_client, _intent_succeeded_body(intent, "evt_forged"))

    assert response.status_code == 400
    assert WebhookEvent.objects.count() == 0
    assert auto_payments(organization)[0].status == PaymentStatus.PENDING
    assert wallet_of(organization).balance == D("3")


def test_a_checkout_payments_own_intent_event_changes_nothing(
    api_client, organization, fake_stripe, settings, django_capture_on_commit_callbacks
):
    """Stripe sends payment_intent.succeeded for a Checkout payment too: only the session's events settle it."""
    from tests.payments.payment_helpers import stripe_payment

    settings.STRIPE_API_BASE = ""  # the checkout's helper answers Stripe's own address (responses)
    payment = stripe_payment(organization, "25.00")
    intent = {
        "id": "pi_checkout",
        "object": "payment_intent",
        "amount": 2500,
        "amount_received": 2500,
        "currency": "usd",
        "metadata": {"payment_id": str(payment.pk)},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = post_stripe(api_client, _intent_succeeded_body(intent, "evt_checkout_pi"))

    assert response.status_code == 200
    assert WebhookEvent.objects.get().payment_id is None
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING


def test_an_intent_marked_auto_for_a_checkout_payment_is_refused(
    api_client, organization, fake_stripe, settings, django_capture_on_commit_callbacks
):
    from tests.payments.payment_helpers import stripe_payment

    settings.STRIPE_API_BASE = ""
    payment = stripe_payment(organization, "25.00")
    intent = {
        "id": "pi_checkout",
        "object": "payment_intent",
        "amount": 2500,
        "amount_received": 2500,
        "currency": "usd",
        "metadata": {"payment_id": str(payment.pk), "tollgate_auto": "true"},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = post_stripe(api_client, _intent_succeeded_body(intent, "evt_checkout_auto"))

    assert response.status_code == 400
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING


@pytest.mark.parametrize("method", ["pm_card_chargeDeclined", "pm_card_authenticationRequired", "pm_unknown"])
def test_a_stripe_decline_fails_the_payment_and_counts(organization, fake_stripe, method):
    below(organization)
    stripe_card_save(organization, payment_method=method)
    auto_enable(organization, provider="stripe", payment_method=None)

    assert run(organization) == PaymentStatus.FAILED

    [payment] = auto_payments(organization)
    assert payment.failure_reason
    assert setting(organization).consecutive_declines == 1
    assert wallet_of(organization).balance == D("3")


def test_stripe_unreachable_keeps_the_payment_pending_and_retries_with_the_same_key(organization, fake_stripe, settings):
    below(organization)
    stripe_card_save(organization, payment_method="pm_outage")
    auto_enable(organization, provider="stripe", payment_method=None)
    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)

    with pytest.raises(ProviderUnreachable):
        auto_recharge.auto_recharge_charge(payment_id=payment.pk)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert setting(organization).consecutive_declines == 0
    keys = {r.headers["Idempotency-Key"] for r in fake_stripe.intent_requests()}
    assert keys == {f"tollgate-auto-{payment.pk}"}  # the SDK's own retries reuse it too

    AutoRecharge.objects.filter(pk=organization.pk).update(payment_method="pm_card_visa")
    assert auto_recharge.auto_recharge_charge(payment_id=payment.pk).status == PaymentStatus.PENDING
    assert len(fake_stripe.charges) == 1
    assert {r.headers["Idempotency-Key"] for r in fake_stripe.intent_requests()} == keys


def test_the_fake_stripe_answers_a_repeated_key_without_charging_again(organization, fake_stripe):
    below(organization)
    stripe_card_save(organization)
    auto_enable(organization, provider="stripe", payment_method=None)
    payment = auto_recharge.auto_recharge_start(organization_id=organization.pk)
    from payments.providers import provider_get

    setting_ = setting(organization)
    first = provider_get("stripe").charge_saved(payment, customer=setting_.stripe_customer, payment_method="pm_card_visa")
    again = provider_get("stripe").charge_saved(payment, customer=setting_.stripe_customer, payment_method="pm_card_visa")

    assert first == again
    assert len(fake_stripe.charges) == 1


# --- A real debit (the lead wires the ledger's statement to send the signal) ------------------------------


def test_a_real_debit_below_the_threshold_starts_the_top_up(
    live_client, organization, catalogue, django_capture_on_commit_callbacks
):
    """POST usage/ that leaves available below the threshold: the ledger sends auto_recharge_due_signal
    after commit, and exactly one top-up is charged and credited."""
    wallet_fund(organization, "10")
    auto_enable(organization, threshold="5", amount="20")

    with sandbox_network(), django_capture_on_commit_callbacks(execute=True):
        response = live_client.post(
            "/api/v1/usage/",
            {"service": "dalle", "idempotency_key": "big-image", "width": 16384, "height": 8192},
            format="json",
        )

    assert response.status_code == 201, response.content
    assert D(response.json()["cost"]) == D("5.12")
    [payment] = auto_payments(organization)
    assert_credited_once(payment)
    assert wallet_of(organization).balance == D("10") - D("5.12") + D("20")
    assert_money_invariants([organization.pk])


def test_the_signal_gate_lets_one_task_through_per_organization(organization, other_organization):
    """The receiver is cheap: within the gate's 30 s, further announcements queue nothing."""
    from django.core.cache import cache

    wallet_fund(organization, "10")  # not below yet: the first announcement's task finds nothing to do
    auto_enable(organization, threshold="5", amount="20")
    due(organization)
    wallet_fund(organization, "-8")

    due(organization)  # gated
    assert auto_payments(organization) == []

    cache.delete(f"auto-recharge-due:{organization.pk}")
    with sandbox_network():
        due(organization)
    assert len(auto_payments(organization)) == 1
