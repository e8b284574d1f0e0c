"""Relay credentials never cross in clear (RFC 3207), over real SMTP sessions.

A fake relay that offers AUTH but no STARTTLS (a misconfigured relay, or any relay once a man in
the middle strips STARTTLS from its EHLO answer) must never see the password: the reply waits,
and /readyz says why. The same relay with STARTTLS gets the login over TLS only.
"""
from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from tests.relay_sink import RelaySink, free_port
from tests.sns_emulator import _pki
from tests.test_outbound import inquiry, outbound_gateway, reply, send_due

USER, PASSWORD = "gateway", "s3cret-Relay-pw"


def _secrets_in(wire: bytes) -> list[bytes]:
    """Every form the password could cross in: as is, or base64 in AUTH PLAIN / LOGIN."""
    forms = [PASSWORD.encode(), base64.b64encode(PASSWORD.encode()),
             base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()), base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode())]
    return [form for form in forms if form in wire]


@pytest.fixture
def trusted_test_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's certificate is issued by the tests' CA; the client trusts it as it would the
    system's (OpenSSL reads SSL_CERT_FILE when a default context loads its CAs)."""
    monkeypatch.setenv("SSL_CERT_FILE", _pki().ca_file)


def test_a_relay_without_starttls_never_receives_the_password_and_readyz_says_so(
        tmp_path: Path, database_url: str, trusted_test_ca: None) -> None:
    port = free_port()
    url = f"smtp://{USER}:{PASSWORD}@127.0.0.1:{port}"
    running = outbound_gateway(tmp_path, database_url, url)
    try:
        studio, _, conversation = inquiry(running)
        reply(running, studio.token, conversation["id"])
        with RelaySink(port=port, credentials=(USER, PASSWORD)) as stripped:
            assert send_due(running) == 1
        assert stripped.logins == [] and stripped.received == []
        assert b"EHLO" in stripped.wire and _secrets_in(bytes(stripped.wire)) == []
        assert b"AUTH" not in stripped.wire

        api = running.api(studio.token)
        message = api.get(f"/api/v1/conversations/{conversation['id']}").json()["messages"][-1]
        assert message["delivery"] == "queued" and "STARTTLS" in message["delivery_error"]
        ready = running.api(None).get("/readyz")
        assert ready.status_code == 200  # mail is still received; replies wait for the relay
        assert ready.json()["status"] == "degraded" and "STARTTLS" in ready.json()["relay"]

        # The operator mends the relay: the reply goes out over TLS, and readiness is plain again.
        with RelaySink(port=port, credentials=(USER, PASSWORD), tls=_pki().server_context()) as mended:
            assert send_due(running, later=timedelta(hours=1)) == 1
        assert mended.logins == [(USER, PASSWORD, True)] and len(mended.received) == 1
        assert _secrets_in(bytes(mended.wire)) == [] and b"STARTTLS" in mended.wire
        assert api.get(f"/api/v1/conversations/{conversation['id']}").json()["messages"][-1]["delivery"] == "sent"
        ready = running.api(None).get("/readyz").json()
        assert (ready["status"], ready["outbox"]["waiting"]) == ("ok", 0) and "relay" not in ready
    finally:
        running.stop()


def test_without_credentials_a_plain_relay_is_still_used(tmp_path: Path, database_url: str) -> None:
    """Opportunistic TLS as before: nothing secret to protect, so a relay without STARTTLS
    (a local Postfix on the same host, say) takes the mail."""
    with RelaySink() as sink:
        running = outbound_gateway(tmp_path, database_url, sink.url)
        try:
            studio, _, conversation = inquiry(running)
            reply(running, studio.token, conversation["id"])
            assert send_due(running) == 1
            assert running.api(None).get("/readyz").json()["status"] == "ok"
        finally:
            running.stop()
    assert len(sink.received) == 1
