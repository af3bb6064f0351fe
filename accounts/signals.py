from django.dispatch import Signal

# Sent inside the transaction that creates an organization (kwargs: organization), so that higher
# floors (the payments app opens the wallet) join that transaction without accounts importing them.
organization_created = Signal()

# Sent after a user's password is replaced or made unusable, once it is saved (kwargs: user), by
# whatever path did it: the dashboard's change and reset forms, the admin, `manage.py
# changepassword`. A sign-in that only re-hashes the same password with a newer hasher does not send it.
user_password_changed = Signal()

# Sent before a key's allowed models are written (kwargs: models, the list of names), so that the
# gateway, a higher floor, refuses names that no model route answers to (its receiver raises
# InvalidRequest) without accounts importing it. With no receiver, any well-formed name is kept.
api_key_models_check = Signal()
