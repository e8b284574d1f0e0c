"""Who sent it: SPF, DKIM and DMARC over real DNS (a local server), recorded and acted on.

The gateway under test is real (SMTP in, processor, HTTP API out); the sender domains' DNS is a
real DNS server on an ephemeral port (tests/dns_server.py) holding their SPF, DKIM and DMARC
records. The SMTP client connects from 127.0.0.1, which is what SPF evaluates.
"""
from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any, Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.inbound import authentication
from gateway.inbound.authentication import Verdicts, authenticate
from gateway.inbound.mime import parse
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.dns_server import RunningDns, Zone, dns_server, silent_dns_server
from tests.mail import make_mail

SELECTOR = "sel1"


def _key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


PRIVATE_KEY, PUBLIC_RECORD = _key()


def zone() -> Zone:
    """Test domains (RFC 2606 names, each its own organisational domain): `example.com` sends
    only from 192.0.2.1 and signs with DKIM, DMARC p=reject; `example.net` allows 127.0.0.1 by
    SPF but has no DMARC record; `example.org` is a relay that allows 127.0.0.1."""
    z = Zone()
    z.txt("example.com", "v=spf1 ip4:192.0.2.1 -all")
    z.txt(f"{SELECTOR}._domainkey.example.com", PUBLIC_RECORD)
    z.txt("_dmarc.example.com", "v=DMARC1; p=reject; adkim=r; aspf=r")
    z.txt("example.net", "v=spf1 ip4:127.0.0.1 -all")
    z.txt("example.org", "v=spf1 ip4:127.0.0.1 -all")
    return z


def signed(raw: bytes, domain: str = "example.com") -> bytes:
    signature = dkim.sign(raw, SELECTOR.encode(), domain.encode(), PRIVATE_KEY,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + raw


@pytest.fixture
def dns() -> Iterator[RunningDns]:
    with dns_server(zone()) as running:
        yield running


@pytest.fixture
def agw(tmp_path: Path, database_url: str, dns: RunningDns) -> Iterator[RunningGateway]:
    running = start_gateway(make_settings(tmp_path, database_url, dns_servers=dns.servers))
    running.add_studio("inkwell")
    yield running
    running.stop()


def _message(gw: RunningGateway, inbound_id: int | None) -> dict[str, Any]:
    """The stored message (held ones are not in the conversation's API view), with its
    authentication read as the API reads it."""
    from sqlalchemy import select
    from gateway.inbox.reading import authentication_out
    from gateway.store.db import read_tx
    from gateway.store.tables import MESSAGE
    with read_tx(gw.engine) as conn:
        row = dict(conn.execute(select(MESSAGE).where(MESSAGE.c.inbound_mail_id == inbound_id)).one()._mapping)
    auth = authentication_out(row["authentication_results"])
    row["authentication"] = None if auth is None else {"spf": auth.spf, "dkim": auth.dkim, "dmarc": auth.dmarc}
    return row


def _settings(tmp_path: Path, servers: str, timeout: float = 5.0) -> Any:
    return make_settings(tmp_path, "sqlite://", dns_servers=servers, dns_timeout=timeout)


# --- the verdicts ------------------------------------------------------------------------

def test_a_signed_mail_from_its_domain_passes_dkim_and_dmarc(tmp_path: Path, dns: RunningDns) -> None:
    raw = signed(make_mail(from_="Lena <lena@example.com>"))
    verdicts = authenticate(raw, parse(raw), "lena@example.com", "127.0.0.1:40000 helo=client.test",
                            _settings(tmp_path, dns.servers))
    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("fail", "pass", "pass")
    assert verdicts.aligned and not verdicts.dmarc_fails
    assert verdicts.summary("mail.test") == (
        "mail.test; spf=fail smtp.mailfrom=example.com; dkim=pass header.d=example.com; "
        "dmarc=pass header.from=example.com policy.dmarc=reject")
    assert ("_dmarc.example.com", "TXT") in dns.resolver.queries


def test_a_forged_from_fails_dmarc(tmp_path: Path, dns: RunningDns) -> None:
    raw = make_mail(from_="Lena <lena@example.com>")
    verdicts = authenticate(raw, parse(raw), "lena@example.com", "127.0.0.1:40000 helo=client.test",
                            _settings(tmp_path, dns.servers))
    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("fail", "none", "fail")
    assert verdicts.dmarc_fails and not verdicts.aligned


def test_a_tampered_signature_fails_dkim(tmp_path: Path, dns: RunningDns) -> None:
    raw = signed(make_mail(from_="Lena <lena@example.com>", body="Original")).replace(b"Original", b"Changed!")
    verdicts = authenticate(raw, parse(raw), "lena@example.com", "127.0.0.1:40000", _settings(tmp_path, dns.servers))
    assert (verdicts.dkim, verdicts.dmarc) == ("fail", "fail")


def test_spf_alone_aligns_but_no_dmarc_record_is_no_verdict(tmp_path: Path, dns: RunningDns) -> None:
    raw = make_mail(from_="Tom <tom@example.net>")
    verdicts = authenticate(raw, parse(raw), "tom@example.net", "127.0.0.1:40000", _settings(tmp_path, dns.servers))
    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("pass", "none", "none")
    assert verdicts.aligned and not verdicts.dmarc_fails


def test_a_pass_for_another_domain_is_not_aligned(tmp_path: Path, dns: RunningDns) -> None:
    raw = make_mail(from_="Tom <tom@example.edu>")
    verdicts = authenticate(raw, parse(raw), "bounce@example.org", "127.0.0.1:40000", _settings(tmp_path, dns.servers))
    assert verdicts.spf == "pass" and not verdicts.aligned


def test_a_dns_timeout_is_temperror_within_the_deadline(tmp_path: Path) -> None:
    import time
    raw = signed(make_mail(from_="Lena <lena@example.com>"))
    with silent_dns_server() as servers:
        started = time.monotonic()
        verdicts = authenticate(raw, parse(raw), "lena@example.com", "127.0.0.1:40000",
                                _settings(tmp_path, servers, timeout=0.5))
        took = time.monotonic() - started
    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("temperror", "temperror", "temperror")
    assert not verdicts.dmarc_fails and not verdicts.aligned
    assert took < 5  # one deadline for all lookups together, not one per lookup


def test_a_hostile_from_domain_never_reaches_the_summary() -> None:
    verdicts = Verdicts(dmarc="fail", from_domain='x.example; dkim=pass header.d="bank.example"')
    assert "bank.example" not in verdicts.summary("mail.test")
    assert "dmarc=fail" in verdicts.summary("mail.test")


def test_a_batch_checked_side_by_side_reads_the_public_suffix_list_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first messages of a batch are checked on 16 threads at once: they share one list
    (an lru_cache let each of them build its own, 0.2 s apiece under one GIL)."""
    monkeypatch.setattr(authentication, "_suffix_list", [])     # as in a process that just started
    start = threading.Barrier(16)
    seen: list[int] = []

    def check() -> None:
        start.wait()
        seen.append(id(authentication._suffixes()))

    threads = [threading.Thread(target=check) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 16 and len(set(seen)) == 1
    assert authentication._org("mail.example.co.uk") == "example.co.uk"


# --- end to end over SMTP ----------------------------------------------------------------

def _open_conversation(gw: RunningGateway) -> tuple[int, str]:
    """Lena writes first, signed by her domain: a genuine inquiry."""
    first = make_mail(from_="Lena <lena@example.com>", subject="Termin")
    reply = gw.send(signed(first), "inkwell@mail.test", mail_from="lena@example.com")
    assert reply.code == 250
    gw.process()
    message = _message(gw, reply.inbound_id)
    assert message["state"] == "visible"
    return message["conversation_id"], parse(first).message_id or ""


def test_the_api_shows_the_authentication_results(agw: RunningGateway) -> None:
    conversation_id, _ = _open_conversation(agw)
    detail = agw.api(agw.studios["inkwell"].token).get(f"/api/v1/conversations/{conversation_id}").json()
    auth = detail["messages"][0]["authentication"]
    assert (auth["spf"], auth["dkim"], auth["dmarc"]) == ("fail", "pass", "pass")
    assert auth["results"].startswith("mail.test; spf=fail")


def test_a_forged_reply_failing_dmarc_is_held(agw: RunningGateway) -> None:
    conversation_id, first_id = _open_conversation(agw)
    forged = agw.send(make_mail(from_="Lena <lena@example.com>", subject="Re: Termin",
                                body="Bitte zahlen Sie auf dieses Konto.", in_reply_to=f"<{first_id}>"),
                      "inkwell@mail.test", mail_from="lena@example.com")
    assert forged.code == 250  # never refused: authentication runs after the 250
    agw.process()
    message = _message(agw, forged.inbound_id)
    assert (message["conversation_id"], message["state"]) == (conversation_id, "held")
    assert message["authentication"]["dmarc"] == "fail"
    detail = agw.api(agw.studios["inkwell"].token).get(f"/api/v1/conversations/{conversation_id}").json()
    assert detail["held_count"] == 1 and detail["message_count"] == 1

    genuine = agw.send(signed(make_mail(from_="Lena <lena@example.com>", subject="Re: Termin",
                                        in_reply_to=f"<{first_id}>")),
                       "inkwell@mail.test", mail_from="lena@example.com")
    agw.process()
    assert _message(agw, genuine.inbound_id)["state"] == "visible"


def test_a_reply_without_a_verdict_keeps_todays_behaviour(tmp_path: Path, database_url: str) -> None:
    """The DNS server stops answering: temperror, and the guest's reply is shown as before."""
    with dns_server(zone()) as dns:
        gw = start_gateway(make_settings(tmp_path, database_url, dns_servers=dns.servers))
        try:
            gw.add_studio("inkwell")
            conversation_id, first_id = _open_conversation(gw)
        finally:
            gw.stop()
    with silent_dns_server() as servers:
        gw = start_gateway(make_settings(tmp_path, database_url, dns_servers=servers, dns_timeout=0.5))
        try:
            gw.studios["inkwell"] = _studio_again(gw)
            reply = gw.send(make_mail(from_="Lena <lena@example.com>", subject="Re: Termin",
                                      in_reply_to=f"<{first_id}>"), "inkwell@mail.test",
                            mail_from="lena@example.com")
            assert reply.code == 250
            gw.process()
            message = _message(gw, reply.inbound_id)
            assert (message["conversation_id"], message["state"]) == (conversation_id, "visible")
            assert message["authentication"]["dmarc"] == "temperror"
        finally:
            gw.stop()


def _studio_again(gw: RunningGateway) -> Any:
    """A new API token for the studio a previous gateway on the same database created."""
    from sqlalchemy import select
    from gateway.access.studios import create_token
    from gateway.store.db import write_tx
    from gateway.store.tables import PROFILE, STUDIO
    from tests.conftest import StudioInfo
    with write_tx(gw.engine) as conn:
        studio_id = conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == "inkwell")).scalar_one()
        profile_id = conn.execute(select(PROFILE.c.id).where(PROFILE.c.studio_id == studio_id)).scalars().first()
        token = create_token(conn, studio_id, profile_id)
    return StudioInfo(studio_id, "inkwell", token)


def test_checking_costs_lookups_not_parsing(tmp_path: Path, dns: RunningDns) -> None:
    """authheaders' own organisational-domain lookup parsed the whole public suffix list on
    every call (190 ms a message, 38 s for 200); ours reads it once. A generous bound that
    catches per-message re-reading, not speed."""
    import time
    settings = _settings(tmp_path, dns.servers)
    raw = make_mail(from_="Tom <tom@example.net>")
    message = parse(raw)
    started = time.monotonic()
    for _ in range(200):
        verdicts = authenticate(raw, message, "tom@example.net", "127.0.0.1:40000", settings)
    assert verdicts.aligned
    assert time.monotonic() - started < 10


def test_after_a_timeout_the_next_messages_only_probe_the_resolver(tmp_path: Path) -> None:
    """A dead resolver costs the first message its deadline and the next ones a short probe,
    so a backlog is not held up GATEWAY_DNS_TIMEOUT per batch; all of them are temperror."""
    import time
    raw = make_mail(from_="Lena <lena@example.com>")
    with silent_dns_server() as servers:
        settings = _settings(tmp_path, servers, timeout=3.0)
        first = authenticate(raw, parse(raw), "lena@example.com", "127.0.0.1:40000", settings)
        started = time.monotonic()
        second = authenticate(raw, parse(raw), "lena@example.com", "127.0.0.1:40000", settings)
        took = time.monotonic() - started
    assert first.spf == second.spf == "temperror" and first.dmarc == second.dmarc == "temperror"
    assert took < 2.0  # a probe (0.5 s), not the 3 s deadline again


@pytest.mark.parametrize("raw", [
    b"",
    b"\r\nbody\r\nDKIM-Signature: v=1\r\n",
    b"From: a@example.com\r\nSubject: x\r\n\r\nDKIM-Signature: v=1; in the body\r\n\r\nmore\r\n",
    b"From: a@example.com\n\nDKIM-Signature: v=1\n",
    b"From: a@example.com\r\nthis line is no header\r\n\r\nbody\r\n",
    b"  a continuation first\r\nFrom: a@example.com\r\n\r\n",
    b"From: a@example.com\r\nDKIM-Signature: v=1; d=example.com\r\n\r\nbody",
    b"From mbox-line\r\nFrom: a@example.com\r\n\n\r\n",
    b"From: a@example.com\r\n\r\r\nDKIM-Signature: v=1\r\n",
])
def test_dkim_reads_only_the_header_block_as_dkimpy_splits_it(raw: bytes) -> None:
    """The signatures are counted on the header block alone (authentication._header_block):
    the same fields, and the same refusal of a malformed block, as dkimpy's whole-message split."""
    def fields(message: bytes) -> object:
        try:
            return dkim.rfc822_parse(message)[0]
        except Exception as exc:
            return type(exc)
    assert fields(authentication._header_block(raw)) == fields(raw)
