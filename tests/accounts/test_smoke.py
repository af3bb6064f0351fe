def test_register_then_me(api_client):
    response = api_client.post(
        "/api/v1/auth/register/",
        {"email": "new@example.com", "password": "correct horse battery staple", "organization": "New Co"},
        format="json",
    )
    assert response.status_code == 201, response.content
    token = api_client.post(
        "/api/v1/auth/token/", {"email": "new@example.com", "password": "correct horse battery staple"}, format="json"
    )
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.json()['access']}")
    me = api_client.get("/api/v1/me/")
    assert me.status_code == 200
    assert me.json()["memberships"][0]["role"] == "owner"
