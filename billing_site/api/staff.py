from rest_framework.permissions import BasePermission


class StaffMayChange(BasePermission):
    """Staff with the Django permission the view names in `required_permission` (Billing admins;
    Support may look but not change). API keys are never staff."""

    message = "Only staff with billing rights may do this."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(getattr(user, "is_staff", False) and user.has_perm(view.required_permission))
