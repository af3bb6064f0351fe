"""Outbound HTTP to URLs that customers choose (billing_site/outbound.py): which addresses may be
called, resolution of host names at call time, and a connection pinned to the checked address that
still names the host (Host header, TLS SNI and certificate), without redirects, with short timeouts."""

import ipaddress
import ssl
import time
from pathlib import Path

import pytest
import urllib3

from billing_site import outbound
from billing_site.outbound import DestinationRefused, address_refusal, destination_post, destination_resolve

# A self-signed certificate (and its key) for hooks.example.com, valid until 2126: test use only.
CERTIFICATE = Path(__file__).parent / "certs" / "hooks.example.com.pem"

NOT_PUBLIC = [
    "127.0.0.1",
    "127.1.2.3",
    "10.0.0.5",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.1.1",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::127.0.0.1",
    "::10.0.0.1",  # IPv4-compatible (deprecated, still routed by some stacks)
    "::ffff:0:127.0.0.1",  # IPv4-translated (SIIT)
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a00:1",  # NAT64: 127.0.0.1, 169.254.169.254, local-use prefix
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "4000::1",  # reserved
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.215.14", "64:ff9b::5db8:d70e"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_addresses_that_are_not_public_are_refused(address):
    assert address_refusal(ipaddress.ip_address(address), allow_private=False)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    assert address_refusal(ipaddress.ip_address(address), allow_private=False) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.1", "fc00::1", "::ffff:127.0.0.1"])
def test_allow_private_lets_local_networks_through(address):
    assert address_refusal(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "0.0.0.0", "::", "224.0.0.1", "ff02::1"],
)
def test_metadata_multicast_and_unspecified_addresses_are_refused_even_with_allow_private(address):
    assert address_refusal(ipaddress.ip_address(address), allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://127.1/hook",
        "http://0.0.0.0/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://internal.example/hook",
        "http://mixed.example/hook",
    ],
)
def test_urls_whose_host_resolves_to_a_private_address_are_refused(public_dns, url):
    public_dns["internal.example"] = ["10.1.2.3"]
    public_dns["mixed.example"] = ["93.184.215.14", "127.0.0.1"]  # one bad answer is enough
    with pytest.raises(DestinationRefused):
        destination_resolve(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/x", "https://"),
        ("javascript:alert(1)", "https://"),
        ("https://user:secret@hooks.example.com/x", "user name or password"),
        ("https://:secret@hooks.example.com/x", "user name or password"),
        ("https:///x", "host"),
        ("https://hooks.example.com:99999/x", "port"),
        ("https://does-not-resolve.invalid/x", "resolve"),
        (f"https://{'a' * 64}.example/x", "not valid"),
    ],
)
def test_malformed_urls_are_refused(public_dns, url, message):
    public_dns["hooks.example.com"] = ["93.184.215.14"]
    with pytest.raises(DestinationRefused, match=message):
        destination_resolve(url, allow_private=False)


def test_a_public_url_resolves_to_its_checked_addresses(public_dns):
    public_dns["hooks.example.com"] = ["93.184.215.14", "2606:4700:4700::1111"]

    destination = destination_resolve("https://Hooks.Example.com/t/x?a=1#frag", allow_private=False)

    assert destination.addresses == (ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("2606:4700:4700::1111"))
    assert (destination.scheme, destination.host, destination.port, destination.target) == (
        "https",
        "hooks.example.com",
        443,
        "/t/x?a=1",
    )
    assert destination.host_header == "hooks.example.com"


# --- The connection: pinned, named, no redirects, short timeouts --------------------------------------------


def test_the_post_goes_to_the_checked_address_and_names_the_host(public_dns, hook_server):
    server = hook_server(status=202)
    public_dns["hooks.example.com"] = ["127.0.0.1"]
    destination = destination_resolve(server.url(host="hooks.example.com"), allow_private=True)
    public_dns["hooks.example.com"] = ["10.9.9.9"]  # DNS changes its answer after the check: not asked again

    status = destination_post(destination, body=b"{}", headers={"Content-Type": "application/json"})

    assert status == 202
    [request] = server.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook", b"{}")
    assert request.headers["Host"] == f"hooks.example.com:{server.port}"


def test_a_redirect_is_an_answer_never_followed(hook_server):
    private = hook_server()
    redirecting = hook_server(status=302, headers={"Location": private.url("/stolen")})

    status = destination_post(destination_resolve(redirecting.url(), allow_private=True), body=b"{}", headers={})

    assert status == 302
    assert len(redirecting.requests) == 1 and private.requests == []


@pytest.fixture
def tls_server(hook_server):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERTIFICATE)
    return hook_server(tls=context)


def test_https_keeps_the_host_name_for_sni_and_the_certificate(public_dns, tls_server):
    public_dns["hooks.example.com"] = ["127.0.0.1"]
    destination = destination_resolve(tls_server.url(host="hooks.example.com", scheme="https"), allow_private=True)

    assert destination_post(destination, body=b"{}", headers={}, ca_certs=str(CERTIFICATE)) == 204

    assert tls_server.server_names == ["hooks.example.com"]
    assert tls_server.requests[0].headers["Host"] == f"hooks.example.com:{tls_server.port}"


def test_https_refuses_a_certificate_for_another_name(public_dns, tls_server):
    public_dns["other.example.com"] = ["127.0.0.1"]
    destination = destination_resolve(tls_server.url(host="other.example.com", scheme="https"), allow_private=True)

    with pytest.raises(urllib3.exceptions.SSLError):
        destination_post(destination, body=b"{}", headers={}, ca_certs=str(CERTIFICATE))

    assert tls_server.requests == []


def test_a_slow_server_times_out(hook_server, monkeypatch):
    monkeypatch.setattr(outbound, "READ_TIMEOUT", 0.3)
    slow = hook_server(delay=2)

    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        destination_post(destination_resolve(slow.url(), allow_private=True), body=b"{}", headers={})

    assert time.monotonic() - started < 1.5


def test_the_default_timeouts_are_short():
    assert outbound.CONNECT_TIMEOUT <= 5 and outbound.READ_TIMEOUT <= 10
