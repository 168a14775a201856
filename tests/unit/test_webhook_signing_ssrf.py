"""Webhook signatures as an off-the-shelf Standard Webhooks verifier checks them, and the
SSRF guard on literal and resolved addresses."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from llm_train_api.services.webhooks import signing, ssrf


def test_a_signed_message_verifies_with_the_standardwebhooks_package():
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"job.succeeded","data":{"job_id":"j"}}'
    now = int(time.time())
    headers = signing.headers(secret, "msg_1", now, body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Verifier(secret).verify(body, headers) == {"type": "job.succeeded",
                                                      "data": {"job_id": "j"}}


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_any_change_breaks_the_signature(tamper):
    secret = signing.new_secret()
    body, msg_id, ts = b'{"a":1}', "msg_7", int(time.time())
    headers = signing.headers(secret, msg_id, ts, body)
    if tamper == "body":
        body = b'{"a":2}'
    elif tamper == "id":
        headers["webhook-id"] = "msg_8"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(ts - 1)
    else:
        secret = signing.new_secret()
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body, headers)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.1.1", "fe80::1", "fc00::1", "fd12::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::127.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1",
])
def test_private_addresses_are_refused_unless_allowed(address):
    ip = ipaddress.ip_address(address)
    assert ssrf.refusal(ip, allow_private=False) is not None
    assert ssrf.refusal(ip, allow_private=True) is None


@pytest.mark.parametrize("address", [
    "169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "0.0.0.0", "::",
    "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255",
])
def test_metadata_and_non_unicast_addresses_are_refused_even_when_private_is_allowed(address):
    ip = ipaddress.ip_address(address)
    assert ssrf.refusal(ip, allow_private=True) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert ssrf.refusal(ipaddress.ip_address(address), allow_private=False) is None


def test_literal_urls_are_checked_without_dns():
    for url in ("http://127.0.0.1:8080/hook", "http://[::1]/hook",
                "http://169.254.169.254/latest/meta-data", "http://[::ffff:7f00:1]/"):
        with pytest.raises(ssrf.UnsafeURL):
            ssrf.check(url, allow_private=False)
    target, addresses = ssrf.check("https://[2606:4700:4700::1111]:8443/a?b=1",
                                   allow_private=False)
    assert (target.host, target.port, target.path) == ("2606:4700:4700::1111", 8443, "/a?b=1")
    assert target.host_header == "[2606:4700:4700::1111]:8443"
    assert addresses == [ipaddress.ip_address("2606:4700:4700::1111")]


def _fake_dns(monkeypatch, answers: dict[str, list[str]]) -> None:
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_names_are_judged_by_every_address_they_resolve_to(monkeypatch):
    _fake_dns(monkeypatch, {
        "public.example": ["93.184.215.14"],
        "sneaky.example": ["93.184.215.14", "10.0.0.5"],  # one private record is enough
        "metadata.example": ["169.254.169.254"],
        "mapped.example": ["::ffff:127.0.0.1"],
    })
    assert ssrf.check("https://public.example/h", allow_private=False)[1] == [
        ipaddress.ip_address("93.184.215.14")]
    for host in ("sneaky.example", "metadata.example", "mapped.example"):
        with pytest.raises(ssrf.UnsafeURL, match=host):
            ssrf.check(f"https://{host}/h", allow_private=False)
    with pytest.raises(ssrf.UnsafeURL, match="metadata"):
        ssrf.check("https://metadata.example/h", allow_private=True)
    with pytest.raises(ssrf.Unresolvable):
        ssrf.check("https://nowhere.example/h", allow_private=False)


def test_localhost_resolves_to_loopback_and_is_refused():
    with pytest.raises(ssrf.UnsafeURL, match="loopback"):
        ssrf.check("http://localhost:9/h", allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http://",
                                 "https://user:pw@example.com/", "http://exa mple.com/",
                                 "http://example.com:99999/", "javascript:alert(1)",
                                 "http://example.com/" + "a" * 3000])
def test_malformed_urls_are_refused(url):
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.parse(url)
