"""services.payment_refund: never more than was paid, reserved before the provider is called, and
`held` back to 0 on every path (docs/contract.md §1 Payment, §2.2)."""

from decimal import Decimal

import pytest
import responses

from billing_site.errors import DomainError, InvalidRequest
from payments import ledger, services
from payments.models import PaymentStatus, Refund, RefundStatus, Transfer, TransferKind
from tests.concurrency import run_concurrently
from tests.payments.helpers import assert_money_invariants, money_state, wallet_of
from tests.payments.payment_helpers import (
    STRIPE_API,
    sandbox_notify,
    sandbox_payment,
    settled_sandbox_payment,
    settled_stripe_payment,
)

D = Decimal


@pytest.fixture
def stripe_configured(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_refunds"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_refunds"
    return settings


def refund(payment, amount, *, staff, reason="customer asked", force=False) -> Refund:
    return services.payment_refund(payment=payment, amount=D(amount), reason=reason, staff=staff, force=force)


def assert_refused(expected_status: int, call) -> DomainError:
    with pytest.raises(DomainError) as refused:
        call()
    assert refused.value.status == expected_status, refused.value
    return refused.value


def test_full_refund_returns_the_money_and_marks_the_payment_refunded(organization, staff_user):
    payment = settled_sandbox_payment(organization, "25.00")

    done = refund(payment, "25.00", staff=staff_user, reason="duplicate charge")

    assert done.status == RefundStatus.SUCCEEDED
    assert done.provider_reference.startswith("sbx_re_")
    assert (done.amount, done.forced, done.created_by_id) == (D("25"), False, staff_user.pk)
    transfer = Transfer.objects.get(pk=done.transfer_id)
    assert (transfer.kind, transfer.reference, transfer.memo, transfer.created_by_id) == (
        TransferKind.REFUND,
        f"payment:{payment.pk}",
        "duplicate charge",
        staff_user.pk,
    )
    assert sorted(transfer.entries.values_list("account", "amount")) == [("payments_clearing", D("25")), ("wallet", D("-25"))]
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (PaymentStatus.REFUNDED, D("25"))
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert_money_invariants([organization.pk])


def test_partial_refunds_add_up_to_the_payment(organization, staff_user):
    payment = settled_sandbox_payment(organization, "25.00")

    first = refund(payment, "10.00", staff=staff_user)
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (PaymentStatus.PARTIALLY_REFUNDED, D("10"))

    second = refund(payment, "15.00", staff=staff_user)
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (PaymentStatus.REFUNDED, D("25"))

    assert first.transfer_id != second.transfer_id
    assert Transfer.objects.filter(kind=TransferKind.REFUND, reference=f"payment:{payment.pk}").count() == 2
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize(("already", "amount"), [(None, "25.01"), ("10.00", "15.01"), ("25.00", "0.01"), ("24.99", "1")])
def test_a_refund_beyond_what_remains_is_refused_and_moves_nothing(organization, staff_user, already, amount):
    payment = settled_sandbox_payment(organization, "25.00")
    ledger.wallet_adjust(organization_id=organization.pk, amount=D("100"), reason="plenty of balance", created_by_id=None)
    if already:
        refund(payment, already, staff=staff_user)
    before = money_state(organization)

    assert_refused(400, lambda: refund(payment, amount, staff=staff_user))

    assert money_state(organization) == before
    assert wallet_of(organization).held == 0
    assert Refund.objects.filter(status=RefundStatus.PENDING).count() == 0
    assert_money_invariants([organization.pk])


@pytest.mark.parametrize(("amount", "reason"), [("0", "why"), ("-5", "why"), ("5", ""), ("5", "   ")])
def test_a_refund_needs_a_positive_amount_and_a_reason(organization, staff_user, amount, reason):
    payment = settled_sandbox_payment(organization, "25.00")
    before = money_state(organization)

    with pytest.raises(InvalidRequest):
        refund(payment, amount, staff=staff_user, reason=reason)

    assert money_state(organization) == before
    assert Refund.objects.count() == 0


@pytest.mark.parametrize("outcome", ["pending", "failed"])
def test_only_a_succeeded_payment_can_be_refunded(organization, staff_user, outcome):
    ledger.wallet_adjust(organization_id=organization.pk, amount=D("100"), reason="balance", created_by_id=None)
    payment = sandbox_payment(organization, "25.00")
    if outcome == "failed":
        assert sandbox_notify(payment, "payment.failed").status == PaymentStatus.FAILED
    before = money_state(organization)

    assert_refused(400, lambda: refund(payment, "5", staff=staff_user))

    assert money_state(organization) == before
    assert Refund.objects.count() == 0


def test_refund_of_money_already_spent_is_refused_unless_forced(organization, staff_user):
    payment = settled_sandbox_payment(organization, "25.00")
    ledger.usage_charge(organization_id=organization.pk, cost=D("20"), reference="spent")
    before = money_state(organization)

    refused = assert_refused(402, lambda: refund(payment, "25.00", staff=staff_user))
    assert refused.code == "insufficient_balance"
    assert money_state(organization) == before
    assert Refund.objects.count() == 0

    forced = refund(payment, "25.00", staff=staff_user, reason="chargeback threat; collect later", force=True)

    assert (forced.status, forced.forced) == (RefundStatus.SUCCEEDED, True)
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D("-20"), 0)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    assert_money_invariants([organization.pk])


def test_a_refund_within_the_unspent_part_needs_no_force(organization, staff_user):
    payment = settled_sandbox_payment(organization, "25.00")
    ledger.usage_charge(organization_id=organization.pk, cost=D("20"), reference="spent")

    refund(payment, "5.00", staff=staff_user)

    assert_refused(402, lambda: refund(payment, "0.01", staff=staff_user))
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (0, 0)
    assert_money_invariants([organization.pk])


def test_a_forced_refund_still_needs_a_reason_and_stays_within_the_payment(organization, staff_user):
    payment = settled_sandbox_payment(organization, "25.00")
    ledger.usage_charge(organization_id=organization.pk, cost=D("25"), reference="spent")
    before = money_state(organization)

    with pytest.raises(InvalidRequest):
        refund(payment, "5", staff=staff_user, reason=" ", force=True)
    assert_refused(400, lambda: refund(payment, "25.01", staff=staff_user, reason="over", force=True))

    assert money_state(organization) == before


@pytest.mark.parametrize("force", [False, True])
def test_a_provider_failure_moves_nothing_and_releases_the_hold(organization, staff_user, stripe_configured, force):
    payment = settled_stripe_payment(organization, "25.00")
    before = money_state(organization)

    with responses.RequestsMock() as rsps:
        rsps.get(
            f"{STRIPE_API}/checkout/sessions/{payment.provider_reference}",
            json={"id": payment.provider_reference, "object": "checkout.session", "payment_intent": "pi_1"},
        )
        rsps.post(
            f"{STRIPE_API}/refunds", status=402, json={"error": {"type": "card_error", "message": "The charge is disputed"}}
        )
        assert_refused(502, lambda: refund(payment, "10.00", staff=staff_user, force=force))

    after = money_state(organization)
    assert (after["balance"], after["held"], after["ledger_entries"], after["payments"]) == (
        before["balance"],
        0,
        before["ledger_entries"],
        before["payments"],
    )
    failed = Refund.objects.get()
    assert failed.status == RefundStatus.FAILED and failed.transfer_id is None
    # The failed refund does not count against what remains refundable.
    with responses.RequestsMock() as rsps:
        rsps.get(
            f"{STRIPE_API}/checkout/sessions/{payment.provider_reference}",
            json={"id": payment.provider_reference, "object": "checkout.session", "payment_intent": "pi_1"},
        )
        rsps.post(f"{STRIPE_API}/refunds", json={"id": "re_ok", "object": "refund"})
        assert refund(payment, "25.00", staff=staff_user).status == RefundStatus.SUCCEEDED
    assert wallet_of(organization).held == 0
    assert_money_invariants([organization.pk])


def test_the_refund_hold_blocks_spending_while_the_provider_is_called(organization, staff_user, stripe_configured):
    """While the provider works on a refund, the amount is reserved: the wallet cannot spend it."""
    payment = settled_stripe_payment(organization, "25.00")
    seen_during_call = {}

    def stripe_refund(request):
        wallet = wallet_of(organization)
        seen_during_call.update(balance=wallet.balance, held=wallet.held)
        with pytest.raises(ledger.InsufficientBalance):
            ledger.usage_charge(organization_id=organization.pk, cost=D("15.01"), reference="during refund")
        return 200, {}, '{"id": "re_1", "object": "refund"}'

    with responses.RequestsMock() as rsps:
        rsps.get(
            f"{STRIPE_API}/checkout/sessions/{payment.provider_reference}",
            json={"id": payment.provider_reference, "object": "checkout.session", "payment_intent": "pi_1"},
        )
        rsps.add_callback(responses.POST, f"{STRIPE_API}/refunds", callback=stripe_refund)
        refund(payment, "10.00", staff=staff_user)

    assert seen_during_call == {"balance": D("25"), "held": D("10")}
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D("15"), 0)
    assert_money_invariants([organization.pk])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("force", [False, True])
def test_concurrent_refunds_never_exceed_the_payment(organization, staff_user, eager_celery, force):
    payment = settled_sandbox_payment(organization, "25.00")
    ledger.wallet_adjust(organization_id=organization.pk, amount=D("100"), reason="balance", created_by_id=None)

    def attempt(_: int) -> Refund | DomainError:
        try:
            return refund(payment, "10.00", staff=staff_user, force=force)
        except DomainError as exc:
            return exc

    outcomes = run_concurrently(6, attempt, reraise=True)

    succeeded = [o for o in outcomes if isinstance(o, Refund)]
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert len(outcomes) == 6
    assert len(succeeded) == 2, outcomes  # 10 + 10 fit in 25; a third would not
    assert all(exc.status == 400 for exc in refused), refused
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_amount) == (PaymentStatus.PARTIALLY_REFUNDED, D("20"))
    wallet = wallet_of(organization)
    assert (wallet.balance, wallet.held) == (D("105"), 0)
    assert_money_invariants([organization.pk])


def test_a_payment_whose_provider_is_disabled_cannot_be_refunded_here(organization, staff_user, settings):
    """Before: a KeyError (500 in the back office). Now a clear refusal that reserves nothing."""
    payment = settled_sandbox_payment(organization, "25.00")
    settings.PAYMENT_PROVIDERS = ["stripe"]
    before = money_state(organization)

    with pytest.raises(InvalidRequest, match="not enabled"):
        refund(payment, "5.00", staff=staff_user)

    assert money_state(organization) == before
    assert not Refund.objects.exists()
