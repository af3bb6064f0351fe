"""Numbered documents (docs/statements.md): receipts here, statements in the `statements` app. A
document's number is assigned by the database as it is inserted, from one counter row per
organization and kind, so numbers run 1, 2, 3… per organization without gaps or repeats: the counter's
upsert serializes concurrent inserts, and a rolled-back insert rolls its number back with it."""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Organization


class DocumentKind(models.TextChoices):
    RECEIPT = "receipt"
    STATEMENT = "statement"


class DocumentCounter(models.Model):
    """The last number issued of one kind of document for one organization. Written only by the
    numbering trigger (a trigger refuses any other change, and deletion)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=DocumentKind.choices)
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "kind"], name="document_counter_once")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.last} of {self.organization_id}"


class Receipt(models.Model):
    """The receipt of one succeeded payment, made in the transaction that credits it. Immutable: its
    number, date and parties are fixed when it is issued; the payment and its refunds are read when it
    is rendered."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="receipts")
    payment = models.OneToOneField("payments.Payment", on_delete=models.PROTECT, related_name="receipt")
    number = models.PositiveIntegerField(db_default=0, editable=False, help_text="Assigned by the database: 1, 2, 3…")
    issued_at = models.DateTimeField(default=timezone.now)
    # The parties as they were when it was issued ({name, lines}): a later change never alters a receipt.
    billed_to = models.JSONField(default=dict, editable=False)
    seller = models.JSONField(default=dict, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "number"], name="receipt_number_once"),
            models.CheckConstraint(condition=Q(number__gte=1), name="receipt_number_positive"),
        ]

    def __str__(self) -> str:
        return f"receipt {self.number} of {self.organization_id}"
