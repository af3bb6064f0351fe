"""Team: invitations (signed by a secret, expiring), roles, removal, and the last-owner rule."""

import re
from datetime import timedelta

import pytest
from django.test import Client

from accounts import services as account_services
from accounts.models import Invitation, Membership, Role, User
from accounts.services import InvitationInvalid, LastOwner, PermissionRefused
from tests.concurrency import run_concurrently
from tests.dashboard.conftest import client_for
from tests.factories import UserFactory, organization_create

pytestmark = pytest.mark.django_db


def invite(client, email="new@example.com", role="member"):
    return client.post("/dashboard/team/", {"email": email, "role": role})


def invitation_link(mailoutbox) -> str:
    return re.search(r"http://testserver(/invite/\S+/)", mailoutbox[-1].body).group(1)


def test_owner_invites_by_email_with_an_unguessable_link(owner_web, organization, mailoutbox):
    assert invite(owner_web, "New@Example.com", "admin")["Location"] == "/dashboard/team/"
    invitation = Invitation.objects.get(organization=organization)
    assert invitation.email == "new@example.com" and invitation.role == Role.ADMIN
    link = invitation_link(mailoutbox)
    token = link.split("/")[2]
    assert len(token) >= 43 and token not in invitation.digest  # only a digest of the secret is stored
    assert mailoutbox[0].to == ["new@example.com"] and "Acme" in mailoutbox[0].subject
    assert "new@example.com" in owner_web.get("/dashboard/team/").content.decode()


def test_an_invited_person_signs_up_and_joins(owner_web, organization, mailoutbox):
    invite(owner_web, role="admin")
    link = invitation_link(mailoutbox)
    visitor = Client()
    page = visitor.get(link).content.decode()
    assert "Join Acme" in page and "new@example.com" in page
    response = visitor.post(link, {"name": "Newt", "password": "a long passphrase"})
    assert response["Location"] == "/dashboard/"
    membership = Membership.objects.get(organization=organization, user__email="new@example.com")
    assert membership.role == Role.ADMIN and membership.user.name == "Newt"
    assert visitor.get("/dashboard/keys/").status_code == 200  # signed in, as an admin
    assert visitor.get(link).status_code == 302  # used: back to the dashboard, no second membership
    assert Membership.objects.filter(user=membership.user).count() == 1


def test_an_existing_user_accepts_while_signed_in(owner_web, organization, mailoutbox):
    person = UserFactory(email="new@example.com")
    organization_create(name="Their own", owner=person)
    invite(owner_web)
    link = invitation_link(mailoutbox)
    anonymous = Client().get(link).content.decode()
    assert "Log in as new@example.com" in anonymous
    client = client_for(person)
    assert client.post(link)["Location"] == "/dashboard/"
    assert Membership.objects.filter(user=person).count() == 2
    assert client.session["dashboard_organization"] == organization.slug


def test_the_invitation_is_for_its_address_only(owner_web, organization, mailoutbox):
    invite(owner_web)
    stranger = UserFactory(email="stranger@example.com")
    response = client_for(stranger).post(invitation_link(mailoutbox))
    assert "sent to new@example.com" in response.content.decode() or "signed in as stranger" in response.content.decode()
    assert not Membership.objects.filter(user=stranger, organization=organization).exists()


def test_an_expired_invitation_cannot_be_used(organization, owner, mailoutbox):
    created = account_services.invitation_create(
        organization=organization, email="late@example.com", role=Role.MEMBER, invited_by=owner, ttl=timedelta(seconds=-1)
    )
    response = Client().get(f"/invite/{created.token}/")
    assert response.status_code == 404 and "expired" in response.content.decode()
    late = UserFactory(email="late@example.com")
    with pytest.raises(InvitationInvalid, match="expired"):
        account_services.invitation_accept(token=created.token, user=late)
    assert Client().post(f"/invite/{created.token}/", {"password": "a long passphrase"}).status_code == 404
    assert not User.objects.filter(email="late@example.com", memberships__organization=organization).exists()


def test_a_new_invitation_replaces_the_previous_link(owner_web, organization, mailoutbox):
    invite(owner_web)
    first = invitation_link(mailoutbox)
    invite(owner_web)
    second = invitation_link(mailoutbox)
    assert Client().get(first).status_code == 404
    assert Client().get(second).status_code == 200
    assert Invitation.objects.filter(organization=organization, revoked_at__isnull=True).count() == 1


def test_a_revoked_invitation_cannot_be_used(owner_web, organization, mailoutbox):
    invite(owner_web)
    invitation = Invitation.objects.get()
    assert owner_web.post(f"/dashboard/team/invitations/{invitation.pk}/revoke/").status_code == 302
    assert Client().get(invitation_link(mailoutbox)).status_code == 404


def test_unknown_links_answer_404(client):
    assert client.get("/invite/not-a-real-token/").status_code == 404


def test_members_are_already_members(owner_web, member, organization):
    response = invite(owner_web, member.email)
    assert response.status_code == 400 and "already a member" in response.content.decode()


def test_admins_invite_admins_and_members_but_not_owners(admin_web, org_admin, organization):
    assert 'value="owner"' not in admin_web.get("/dashboard/team/").content.decode().split('data-testid="invite-form"')[1]
    assert invite(admin_web, role="owner").status_code == 400
    with pytest.raises(PermissionRefused):
        account_services.invitation_create(
            organization=organization, email="x@example.com", role=Role.OWNER, invited_by=org_admin
        )
    assert invite(admin_web, role="admin").status_code == 302


def test_members_see_the_team_but_no_controls(member_web, member, organization):
    html = member_web.get("/dashboard/team/").content.decode()
    assert member.email in html and "invite-form" not in html and 'name="role"' not in html and "Remove</a>" not in html
    assert invite(member_web).status_code == 403
    assert not Invitation.objects.exists()


def test_owner_changes_roles(owner_web, member):
    membership = Membership.objects.get(user=member)
    assert owner_web.post(f"/dashboard/team/{membership.pk}/role/", {"role": "admin"})["Location"] == "/dashboard/team/"
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN


def test_admins_cannot_touch_owners(admin_web, owner, org_admin, member):
    owner_membership = Membership.objects.get(user=owner)
    admin_web.post(f"/dashboard/team/{owner_membership.pk}/role/", {"role": "member", "confirmed": "yes"})
    assert admin_web.post(f"/dashboard/team/{owner_membership.pk}/remove/").status_code == 403
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER
    member_membership = Membership.objects.get(user=member)
    admin_web.post(
        f"/dashboard/team/{member_membership.pk}/role/", {"role": "owner", "confirmed": "yes"}
    )  # admins grant no ownership
    member_membership.refresh_from_db()
    assert member_membership.role == Role.MEMBER


def test_the_last_owner_can_be_neither_demoted_nor_removed(owner_web, owner, organization):
    membership = Membership.objects.get(user=owner)
    response = owner_web.post(f"/dashboard/team/{membership.pk}/role/", {"role": "admin", "confirmed": "yes"}, follow=True)
    assert "at least one owner" in response.content.decode()
    response = owner_web.post(f"/dashboard/team/{membership.pk}/remove/", follow=True)
    assert "at least one owner" in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == Role.OWNER
    with pytest.raises(LastOwner):
        account_services.membership_remove(membership=membership, actor=owner)


def test_with_two_owners_one_may_step_down(owner_web, owner, second_owner):
    membership = Membership.objects.get(user=owner)
    owner_web.post(f"/dashboard/team/{membership.pk}/role/", {"role": "admin", "confirmed": "yes"})
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    with pytest.raises(LastOwner):
        account_services.membership_role_change(
            membership=Membership.objects.get(user=second_owner), role=Role.MEMBER, actor=second_owner
        )


def test_removing_and_leaving(owner_web, admin_web, member, org_admin, organization):
    member_membership = Membership.objects.get(user=member)
    assert "lose access" in owner_web.get(f"/dashboard/team/{member_membership.pk}/remove/").content.decode()
    assert owner_web.post(f"/dashboard/team/{member_membership.pk}/remove/")["Location"] == "/dashboard/team/"
    assert not Membership.objects.filter(pk=member_membership.pk).exists()
    admin_membership = Membership.objects.get(user=org_admin)
    assert admin_web.post(f"/dashboard/team/{admin_membership.pk}/remove/")["Location"] == "/dashboard/"  # leaves
    assert not Membership.objects.filter(pk=admin_membership.pk).exists()
    assert admin_web.get("/dashboard/")["Location"] == "/welcome/"  # in no organization now


def test_another_organizations_members_answer_404(owner_web, other_owner):
    foreign = Membership.objects.get(user=other_owner)
    assert owner_web.post(f"/dashboard/team/{foreign.pk}/role/", {"role": "member"}).status_code == 404
    assert owner_web.get(f"/dashboard/team/{foreign.pk}/remove/").status_code == 404
    assert owner_web.post(f"/dashboard/team/{foreign.pk}/remove/").status_code == 404
    foreign.refresh_from_db()
    assert foreign.role == Role.OWNER


def test_another_organizations_invitation_answers_404(owner_web, other_organization, other_owner):
    created = account_services.invitation_create(
        organization=other_organization, email="x@example.com", role="member", invited_by=other_owner
    )
    assert owner_web.post(f"/dashboard/team/invitations/{created.invitation.pk}/revoke/").status_code == 404
    created.invitation.refresh_from_db()
    assert created.invitation.revoked_at is None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner():
    first, second = UserFactory(), UserFactory()
    organization = organization_create(name="Duo", owner=first)
    organization.memberships.create(user=second, role=Role.OWNER)
    memberships = {m.user_id: m for m in organization.memberships.all()}
    pairs = [(first, second), (second, first)]

    def demote(index: int) -> str:
        actor, target = pairs[index]
        try:
            account_services.membership_role_change(membership=memberships[target.pk], role=Role.ADMIN, actor=actor)
        except (LastOwner, PermissionRefused):  # the loser is no longer an owner by the time it holds the lock
            return "refused"
        return "demoted"

    outcomes = run_concurrently(2, demote, reraise=True)
    assert sorted(outcomes) == ["demoted", "refused"]
    assert organization.memberships.filter(role=Role.OWNER).count() == 1


def test_accepting_twice_answers_the_same_membership(organization, owner):
    created = account_services.invitation_create(
        organization=organization, email="twice@example.com", role=Role.MEMBER, invited_by=owner
    )
    person = UserFactory(email="twice@example.com")
    first = account_services.invitation_accept(token=created.token, user=person)
    assert account_services.invitation_accept(token=created.token, user=person) == first
    with pytest.raises(InvitationInvalid, match="already been used"):
        account_services.invitation_accept(token=created.token, user=UserFactory(email="twice2@example.com"))


def test_invitations_are_limited_per_organization(owner_web, admin_web, organization, mailoutbox):
    limit = account_services.INVITATIONS_PER_HOUR
    for n in range(limit):
        assert invite(owner_web if n % 2 else admin_web, f"person{n}@example.com").status_code == 302

    refused = invite(admin_web, "one-too-many@example.com")

    assert refused.status_code == 400
    assert "This organization sent" in refused.content.decode() and "invitations in the last hour" in refused.content.decode()
    assert not Invitation.objects.filter(email="one-too-many@example.com").exists()
    assert len(mailoutbox) == limit


def test_invitations_are_limited_per_inviting_person(owner, owner_web, organization, mailoutbox):
    second = organization_create(name="Second", owner=owner)
    limit = account_services.INVITATIONS_PER_HOUR
    for n in range(limit):
        if n == limit // 2:
            owner_web.post("/dashboard/switch/", {"organization": second.slug})
        assert invite(owner_web, f"person{n}@example.com").status_code == 302

    refused = invite(owner_web, "one-too-many@example.com")

    assert refused.status_code == 400 and "You sent" in refused.content.decode()
    assert Invitation.objects.filter(organization=second).count() == limit - limit // 2
    assert len(mailoutbox) == limit


def test_the_invitation_service_enforces_the_limit_for_every_caller(owner, organization):
    for n in range(account_services.INVITATIONS_PER_HOUR):
        account_services.invitation_create(organization=organization, email=f"p{n}@example.com", role="member", invited_by=owner)

    with pytest.raises(account_services.InvitationsThrottled) as refused:
        account_services.invitation_create(organization=organization, email="late@example.com", role="member", invited_by=owner)
    assert refused.value.status == 429


@pytest.mark.parametrize(
    ("start", "role", "question"), [(Role.MEMBER, "owner", "an owner?"), (Role.OWNER, "admin", "ownership?")]
)
def test_granting_or_removing_ownership_asks_first(owner_web, organization, start, role, question):
    from tests.factories import UserFactory

    membership = organization.memberships.create(user=UserFactory(email="pat@example.com"), role=start)
    asked = owner_web.post(f"/dashboard/team/{membership.pk}/role/", {"role": role})
    html = asked.content.decode()
    assert asked.status_code == 200 and question in html and 'name="confirmed" value="yes"' in html
    membership.refresh_from_db()
    assert membership.role == start  # nothing changed yet
    done = owner_web.post(f"/dashboard/team/{membership.pk}/role/", {"role": role, "confirmed": "yes"})
    assert done["Location"] == "/dashboard/team/"
    membership.refresh_from_db()
    assert membership.role == role


def test_a_change_that_keeps_ownership_as_it_is_asks_nothing(owner_web, member):
    membership = Membership.objects.get(user=member)
    assert owner_web.post(f"/dashboard/team/{membership.pk}/role/", {"role": "admin"}).status_code == 302
