import pytest

from tests.payments.fake_stripe import FakeStripe

STRIPE_SECRET_KEY = "sk_test_51TollgateAutoKey"
STRIPE_WEBHOOK_SECRET = "whsec_tollgate_auto_endpoint_secret"


@pytest.fixture
def fake_stripe(settings):
    """A fake Stripe HTTP server the real `stripe` package talks to; stopped after the test."""
    server = FakeStripe().start()
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_SECRET_KEY = STRIPE_SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET
    yield server
    server.close()
