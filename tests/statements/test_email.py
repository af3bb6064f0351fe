"""An issued statement is emailed to the organization's owners once, with its PDF and CSV; the task
run again, at once, or after a failed send never emails twice and never loses it."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend
from pypdf import PdfReader

from accounts.models import Organization, Role
from statements.emails import statement_email_send
from statements.models import Statement
from statements.services import statement_issue_next
from statements.tasks import statement_email
from tests.concurrency import run_concurrently
from tests.factories import UserFactory, organization_create, wallet_fund


class RefusingBackend(EmailBackend):
    """The mail server is down: every send fails as SMTP would (smtplib's errors are OSErrors)."""

    def send_messages(self, messages):
        raise ConnectionRefusedError("mail server down")


class SlowBackend(EmailBackend):
    """The mail server takes its time, so two tasks overlap while the first one is sending."""

    def send_messages(self, messages):
        threading.Event().wait(0.5)
        return super().send_messages(messages)


def people(organization):
    second_owner, admin, member = UserFactory(), UserFactory(), UserFactory()
    organization.memberships.create(user=second_owner, role=Role.OWNER)
    organization.memberships.create(user=admin, role=Role.ADMIN)
    organization.memberships.create(user=member, role=Role.MEMBER)
    return second_owner, admin, member


def november(organization) -> Statement:
    Organization.objects.filter(pk=organization.pk).update(created_at=datetime(2026, 11, 3, tzinfo=UTC))
    statement = statement_issue_next(organization_id=organization.pk, now=datetime(2026, 12, 1, 2, tzinfo=UTC))
    assert statement is not None
    return statement


@pytest.mark.django_db
def test_issuing_emails_the_owners_once_with_both_files(
    organization, owner, eager_celery, django_capture_on_commit_callbacks, settings
):
    settings.SITE_URL = "https://billing.example.com/"
    second_owner, admin, member = people(organization)
    with django_capture_on_commit_callbacks(execute=True):
        statement = november(organization)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([owner.email, second_owner.email])
    assert not set(message.to) & {admin.email, member.email} and not message.cc and not message.bcc
    assert message.subject == f"Your Tollgate statement for November 2026 (S-{statement.number:06d})"
    assert "Opening balance: $0.00" in message.body and "Closing balance: $0.00" in message.body
    assert "https://billing.example.com/dashboard/statements/" in message.body
    (pdf_name, pdf, pdf_type), (csv_name, csv_body, csv_type) = message.attachments
    slug = organization.slug
    assert (pdf_name, pdf_type) == (f"statement-{slug}-S-{statement.number:06d}.pdf", "application/pdf")
    assert (csv_name, csv_type) == (f"statement-{slug}-S-{statement.number:06d}.csv", "text/csv")
    assert f"S-{statement.number:06d}" in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "closing_balance" in (csv_body.decode() if isinstance(csv_body, bytes) else csv_body)
    statement.refresh_from_db()
    emailed_at = statement.emailed_at
    assert emailed_at is not None
    # the task again (a retry, a second worker): nothing more is sent, emailed_at stays
    assert statement_email.delay(statement.pk).get() is False
    assert statement_email_send(statement_id=statement.pk) is False
    assert len(mail.outbox) == 1
    statement.refresh_from_db()
    assert statement.emailed_at == emailed_at


@pytest.mark.django_db
def test_a_failed_send_is_retried_not_lost(organization, settings):
    statement = november(organization)
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    with pytest.raises(ConnectionRefusedError):
        statement_email_send(statement_id=statement.pk)
    statement.refresh_from_db()
    assert statement.emailed_at is None and not mail.outbox
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert statement_email_send(statement_id=statement.pk) is True
    assert len(mail.outbox) == 1


@pytest.mark.django_db
def test_no_statement_no_owner_no_email(settings, db):
    assert statement_email_send(statement_id=987654) is False
    lonely = organization_create(name="Lonely")
    lonely.memberships.filter(role=Role.OWNER).update(role=Role.ADMIN)
    statement = november(lonely)
    assert statement_email_send(statement_id=statement.pk) is False
    assert not mail.outbox
    statement.refresh_from_db()
    assert statement.emailed_at is None


@pytest.mark.django_db(transaction=True)
def test_two_tasks_at_once_send_one_email(settings):
    settings.EMAIL_BACKEND = f"{__name__}.SlowBackend"
    organization = organization_create(name="Racing")
    wallet_fund(organization, "1.5")
    statement = november(organization)
    results = run_concurrently(4, lambda _: statement_email_send(statement_id=statement.pk), reraise=True)
    assert sorted(results) == [False, False, False, True]
    assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_a_silent_mail_server_gives_up_in_time_and_the_statement_waits_for_a_retry(organization, settings, monkeypatch):
    """A real SMTP port that accepts and never greets: the send times out (the claimed row is not held
    forever), the claim rolls back, the task's retry policy (OSError) takes it from there."""
    import socket
    import time

    from statements import emails

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        statement = november(organization)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", listener.getsockname()[1]
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        monkeypatch.setattr(emails, "SEND_TIMEOUT_SECONDS", 1)
        started = time.monotonic()
        # in a thread joined with a timeout: a send without one would hang here, not fail
        (outcome,) = run_concurrently(1, lambda _: statement_email_send(statement_id=statement.pk))
        assert isinstance(outcome, OSError), outcome
        assert time.monotonic() - started < 10
        assert accepted, "the mail server was reached"
        statement.refresh_from_db()
        assert statement.emailed_at is None
    finally:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.mark.django_db
def test_the_beat_queues_again_an_email_whose_task_was_lost(organization, owner, eager_celery, settings):
    """Issued while the broker was down (the signal's task never ran): the beat task queues the email
    again once the statement is 15 minutes old, for three days; never one already emailed."""
    from datetime import timedelta

    from django.utils import timezone

    from statements.tasks import statements_issue

    now = timezone.now()

    def issued(month: int, age: timedelta, *, emailed: bool = False) -> Statement:
        return Statement.objects.create(
            organization=organization,
            period_start=datetime(2025, month, 1, tzinfo=UTC),
            period_end=datetime(2025, month + 1, 1, tzinfo=UTC),
            currency="USD",
            opening_balance=0,
            closing_balance=0,
            issued_at=now - age,
            emailed_at=now if emailed else None,
        )

    lost = issued(1, timedelta(minutes=20))
    fresh = issued(2, timedelta(minutes=5))  # its own task may still be on its way
    done = issued(3, timedelta(hours=1), emailed=True)
    stale = issued(4, timedelta(days=4))
    statements_issue()
    assert [message.subject for message in mail.outbox] == [f"Your Tollgate statement for January 2025 (S-{lost.number:06d})"]
    assert Statement.objects.filter(emailed_at__isnull=True).count() == 2
    assert {fresh.pk, stale.pk} == set(Statement.objects.filter(emailed_at__isnull=True).values_list("pk", flat=True))
    assert Statement.objects.get(pk=done.pk).emailed_at == done.emailed_at
    statements_issue()
    assert len(mail.outbox) == 1
