import secrets

from django.db import migrations, models

import payments.models
import payments.validators


def alert_signing_secrets_fill(apps, schema_editor):
    """A secret of its own for every existing wallet (a column default would give them all one)."""
    Wallet = apps.get_model("payments", "Wallet")
    for pk in Wallet.objects.values_list("pk", flat=True).iterator():
        Wallet.objects.filter(pk=pk).update(alert_signing_secret="whsec_" + secrets.token_urlsafe(32))


class Migration(migrations.Migration):

    dependencies = [
        ("payments", "0003_payments_refunds_codes"),
    ]

    operations = [
        migrations.AddField(
            model_name="wallet",
            name="alert_signing_secret",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.RunPython(alert_signing_secrets_fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="wallet",
            name="alert_signing_secret",
            field=models.CharField(
                default=payments.models.alert_signing_secret_new,
                editable=False,
                help_text="Signs the alert webhook's body; the organization sees and rotates it.",
                max_length=64,
            ),
        ),
        migrations.AlterField(
            model_name="wallet",
            name="alert_webhook_url",
            field=models.URLField(
                blank=True,
                help_text="Optional: a signed POST goes here on low balance.",
                max_length=500,
                validators=[payments.validators.alert_webhook_url_validate],
            ),
        ),
    ]
