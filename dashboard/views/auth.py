"""Sign-up, sign-in (throttled), sign-out, password reset and change, invitations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from accounts import services as account_services
from billing_site.errors import DomainError
from dashboard import forms, selectors
from dashboard.context import SESSION_KEY, current_resolve, secure_headers

if TYPE_CHECKING:
    from django.views import View as _ViewBase
else:
    _ViewBase = object

AUTH_BACKEND = "django.contrib.auth.backends.ModelBackend"


def home(request):
    return redirect("dashboard:overview" if request.user.is_authenticated else "dashboard:login")


class SecureHeadersMixin(_ViewBase):
    def dispatch(self, request, *args, **kwargs):
        return secure_headers(super().dispatch(request, *args, **kwargs))


class LoginView(SecureHeadersMixin, auth_views.LoginView):
    form_class = forms.LoginForm
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return self.next_page or reverse("dashboard:overview")


class LogoutView(auth_views.LogoutView):
    next_page = "dashboard:login"  # a view name: LogoutView passes it to resolve_url()


SIGNED_UP_MESSAGE = (
    "If this address is new, your account is ready: log in to continue. If it already had an account, we sent it an "
    "email instead."
)


@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "POST"])
def signup(request):
    """Create an account and its organization (the person owns it), then ask to log in: an address
    that already has an account gets the very same answer (and an email), so the page tells no one
    which addresses are registered."""
    if request.user.is_authenticated:
        return redirect("dashboard:overview")
    form = forms.SignupForm(request.POST or None, request=request)
    if request.method == "POST" and form.is_valid():
        try:
            account_services.user_register(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                organization_name=form.cleaned_data["organization"],
            )
        except ValidationError as error:  # the password validators
            form.add_error("password", error)
        except DomainError as error:
            forms.service_error_add(form, error)
        else:
            messages.success(request, SIGNED_UP_MESSAGE)
            return redirect("dashboard:login")
    return secure_headers(render(request, "registration/signup.html", {"form": form}))


class PasswordResetView(SecureHeadersMixin, auth_views.PasswordResetView):
    form_class = forms.ThrottledPasswordResetForm
    template_name = "registration/password_reset_form.html"
    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"
    success_url = reverse_lazy("dashboard:password_reset_done")

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}


class PasswordResetDoneView(SecureHeadersMixin, auth_views.PasswordResetDoneView):
    template_name = "registration/password_reset_done.html"


class PasswordResetConfirmView(SecureHeadersMixin, auth_views.PasswordResetConfirmView):
    template_name = "registration/password_reset_confirm.html"
    success_url = reverse_lazy("dashboard:password_reset_complete")


class PasswordResetCompleteView(SecureHeadersMixin, auth_views.PasswordResetCompleteView):
    template_name = "registration/password_reset_complete.html"


@method_decorator(never_cache, name="dispatch")
class PasswordChangeView(SecureHeadersMixin, auth_views.PasswordChangeView):
    template_name = "registration/password_change_form.html"
    success_url = reverse_lazy("dashboard:settings")

    def form_valid(self, form):
        messages.success(self.request, "Your password was changed.")
        return super().form_valid(form)

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "current": current_resolve(self.request)}


@sensitive_post_parameters("password")
@never_cache
@require_http_methods(["GET", "POST"])
def invitation(request, token: str):
    """The emailed link. Signed in as the invited address: accept. Not signed in: create the
    account here (or sign in). The token is a 256-bit secret; only its digest is stored."""
    invitation = selectors.invitation_by_token(token=token)
    if invitation is None or not invitation.is_pending():
        if invitation is not None and request.user.is_authenticated and invitation.accepted_by_id == request.user.pk:
            return redirect("dashboard:overview")
        return secure_headers(render(request, "dashboard/invitation_invalid.html", {"invitation": invitation}, status=404))
    account_exists = selectors.user_exists(email=invitation.email)
    signup_form = forms.InvitationSignupForm(request.POST or None) if not request.user.is_authenticated else None
    error = None
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                membership = account_services.invitation_accept(token=token, user=request.user)
            elif signup_form is not None and signup_form.is_valid():  # not signed in, so there is a form
                user, membership = account_services.invitation_signup(
                    token=token, password=signup_form.cleaned_data["password"], name=signup_form.cleaned_data["name"]
                )
                login(request, user, backend=AUTH_BACKEND)
            else:
                membership = None
        except ValidationError as exc:
            assert signup_form is not None  # only a sign-up validates a password
            signup_form.add_error("password", exc)
        except DomainError as exc:
            error = exc.message
        else:
            if membership is not None:
                request.session[SESSION_KEY] = membership.organization.slug
                messages.success(
                    request, f"You joined {membership.organization.name} as {membership.get_role_display().lower()}."
                )
                return redirect("dashboard:overview")
    context = {
        "invitation": invitation,
        "form": signup_form,
        "error": error,
        "account_exists": account_exists,
        "wrong_user": request.user.is_authenticated and request.user.email != invitation.email,
    }
    return secure_headers(render(request, "dashboard/invitation.html", context))
