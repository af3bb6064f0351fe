from django.dispatch import Signal

# Sent inside the transaction that creates an organization (kwargs: organization), so that higher
# floors (the payments app opens the wallet) join that transaction without accounts importing them.
organization_created = Signal()
