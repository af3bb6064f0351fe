"""`manage.py gateway_rotate_keys`: re-encrypt every stored upstream API key under the first key of
GATEWAY_ENCRYPTION_KEYS, after a new key was put first (docs/operations.md, "Upstream API keys")."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from gateway.crypto import UpstreamKeyUnreadable, upstream_key_reencrypt
from gateway.models import Upstream


class Command(BaseCommand):
    help = "Re-encrypt every upstream API key under the first key of GATEWAY_ENCRYPTION_KEYS."

    def handle(self, *args, **options) -> None:
        rotated, unreadable = 0, []
        for upstream_id in Upstream.objects.exclude(api_key_encrypted="").order_by("pk").values_list("pk", flat=True):
            # One short transaction per row, locked, so a key staff set meanwhile is never overwritten.
            with transaction.atomic():
                upstream = Upstream.objects.select_for_update().only("pk", "name", "api_key_encrypted").get(pk=upstream_id)
                if not upstream.api_key_encrypted:
                    continue
                try:
                    token = upstream_key_reencrypt(upstream.api_key_encrypted)
                except UpstreamKeyUnreadable:
                    unreadable.append(upstream.name)
                    continue
                # The plain key is unchanged, so nothing cached changes: a queryset update, no cache signal.
                Upstream.objects.filter(pk=upstream.pk).update(api_key_encrypted=token)
                rotated += 1
        self.stdout.write(f"Re-encrypted {rotated} upstream API key(s) under the first key of GATEWAY_ENCRYPTION_KEYS.")
        if unreadable:
            raise CommandError(
                f"No configured key decrypts the API key of: {', '.join(unreadable)}. Put the key they were encrypted "
                "with back into GATEWAY_ENCRYPTION_KEYS (after the first) and run this again, or set their keys anew."
            )
