"""Provider webhooks over real HTTP into the real pipeline: every variant of every provider.

Each test posts what the provider posts (its field names, encodings and signature scheme, see
tests/providers.py) to a running gateway, then runs the worker and reads the result back
through the messenger API and the database.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from sqlalchemy import func, select

from gateway.mail.addresses import reply_address
from gateway.store.db import read_tx
from gateway.store.tables import INBOUND, MESSAGE
from gateway.store.models import Attachment
from tests import providers as p
from tests.conftest import MAIL_DOMAIN, SECRET, RunningGateway, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.sns_emulator import SnsEmulator, post_headers, ses_received
from tests.test_webhook_compose import mailgun_fields, postmark_payload, sendgrid_fields

ATTACHMENT = Attachment.__table__  # type: ignore[attr-defined]
VARIANTS = ["mailgun-mime", "mailgun-parsed", "sendgrid-raw", "sendgrid-parsed", "postmark-raw",
            "postmark-parsed", "ses"]
SECRETS = [p.MAILGUN_KEY, p.SENDGRID_AUTH[1], p.POSTMARK_AUTH[1]]
MAX_MESSAGE = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsEmulator]:
    with SnsEmulator() as emulator:
        yield emulator


def webhook_settings(tmp_path: Path, database_url: str, sns: SnsEmulator, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        mailgun_signing_key=p.MAILGUN_KEY, sendgrid_verification_key=p.sendgrid_public_key(),
        sendgrid_basic_auth=":".join(p.SENDGRID_AUTH), postmark_basic_auth=":".join(p.POSTMARK_AUTH),
        ses_topic_arns=p.SES_TOPIC, ses_cert_host_pattern=sns.host_pattern, ses_cert_ca_file=sns.ca_file,
        smtp_max_message_size=MAX_MESSAGE)
    values.update(overrides)
    return make_settings(tmp_path, database_url, **values)


@pytest.fixture
def hooks(tmp_path: Path, database_url: str, sns: SnsEmulator) -> Iterator[RunningGateway]:
    running = start_gateway(webhook_settings(tmp_path, database_url, sns))
    yield running
    running.stop()


def build(variant: str, raw: bytes, recipient: str, sns: SnsEmulator, sender: str = "guest@example.org") -> p.Post:
    """The request `variant` of a provider sends for the email `raw` to `recipient`."""
    if variant == "mailgun-mime":
        return p.mailgun_post(p.mailgun_mime_form(raw, recipient, sender))
    if variant == "mailgun-parsed":
        form = mailgun_fields(raw, recipient=recipient, sender=sender)
        return p.mailgun_post(form, mime=False)
    if variant == "sendgrid-raw":
        return p.sendgrid_post(p.sendgrid_raw_form(raw, [recipient], sender))
    if variant == "sendgrid-parsed":
        return p.sendgrid_post(sendgrid_fields(raw, recipient=recipient, sender=sender))
    if variant == "postmark-raw":
        return p.postmark_post(p.with_raw_email(postmark_payload(raw, recipient=recipient), raw))
    if variant == "postmark-parsed":
        return p.postmark_post(postmark_payload(raw, recipient=recipient))
    if variant == "ses":
        return ses_post(sns, raw, [recipient], sender)
    raise AssertionError(variant)


def ses_post(sns: SnsEmulator, raw: bytes, recipients: list[str], sender: str = "guest@example.org",
             topic: str = p.SES_TOPIC) -> p.Post:
    message = sns.sign(sns.notification(ses_received(raw, recipients, topic, source=sender), topic))
    return p.Post("/webhooks/ses", p.json.dumps(message).encode(), post_headers(message))


def send(running: RunningGateway, post: p.Post) -> httpx.Response:
    return running.api(None).post(post.path, content=post.body, headers=post.headers)


def counts(running: RunningGateway) -> tuple[int, int]:
    with read_tx(running.engine) as conn:
        return (conn.execute(select(func.count()).select_from(INBOUND)).scalar_one(),
                conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one())


def only_conversation(running: RunningGateway, token: str) -> dict[str, Any]:
    api = running.api(token)
    [item] = api.get("/api/v1/conversations").json()["items"]
    return api.get(f"/api/v1/conversations/{item['id']}").json()


def stored_attachment_digests(running: RunningGateway) -> list[str]:
    with read_tx(running.engine) as conn:
        return sorted(conn.execute(select(ATTACHMENT.c.sha256)).scalars())


@pytest.mark.parametrize("variant", VARIANTS)
def test_new_inquiry_is_stored_then_threaded(hooks: RunningGateway, sns: SnsEmulator, variant: str) -> None:
    studio = hooks.add_studio("inkwell")
    mid = new_id()
    raw = make_mail(message_id=mid, subject="Anfrage Unterarm", body="Hallo, ich hätte gern einen Termin.")
    answer = send(hooks, build(variant, raw, studio.address, sns))
    assert answer.status_code == 200 and answer.json()["status"] == "stored"
    with read_tx(hooks.engine) as conn:
        [row] = conn.execute(select(INBOUND.c.id, INBOUND.c.source, INBOUND.c.status)).all()
    assert row.id == answer.json()["id"] and row.source == variant.split("-")[0] and row.status == "pending"
    assert [r.status for r in hooks.process()] == ["done"]
    detail = only_conversation(hooks, studio.token)
    assert detail["subject"] == "Anfrage Unterarm" and detail["guest"]["email"] == "guest@example.org"
    [message] = detail["messages"]
    assert message["text"] == "Hallo, ich hätte gern einen Termin."
    assert message["message_id"] == mid.strip("<>") and message["thread_rule"] == "new"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("how", ["in_reply_to", "reply_address"])
def test_reply_joins_a_conversation_started_over_smtp(hooks: RunningGateway, sns: SnsEmulator, variant: str,
                                                     how: str) -> None:
    studio = hooks.add_studio("inkwell")
    first = new_id()
    assert hooks.send(make_mail(message_id=first, subject="Termin"), studio.address).code == 250
    hooks.process()
    conversation = only_conversation(hooks, studio.token)
    if how == "in_reply_to":
        raw, rcpt = make_mail(subject="Re: Termin", in_reply_to=first, references=[first],
                              body="Freitag passt."), studio.address
    else:  # a client that drops the headers: only the signed reply address links it
        raw = make_mail(subject="Ganz neuer Betreff", body="Freitag passt.")
        rcpt = reply_address(SECRET.encode(), "inkwell", studio.id, conversation["id"], MAIL_DOMAIN)
    assert send(hooks, build(variant, raw, rcpt, sns)).status_code == 200
    hooks.process()
    detail = only_conversation(hooks, studio.token)
    assert detail["id"] == conversation["id"]
    assert [m["thread_rule"] for m in detail["messages"]] == ["new", how]
    assert detail["messages"][1]["text"] == "Freitag passt."


@pytest.mark.parametrize("variant", VARIANTS)
def test_attachment_and_latin1_text_arrive_intact(hooks: RunningGateway, sns: SnsEmulator, variant: str) -> None:
    studio = hooks.add_studio("inkwell")
    photo = bytes(range(256)) * 40 + b"\xff\xd8\xff\xe0 jpeg-ish"
    raw = _latin1_mail_with_photo(photo)
    assert send(hooks, build(variant, raw, studio.address, sns)).status_code == 200
    hooks.process()
    [message] = only_conversation(hooks, studio.token)["messages"]
    assert message["text"] == "Grüße aus Köln, anbei meine Skizze für das Motiv."
    assert message["subject"] == "Skizze fürs Tattoo"
    [attachment] = message["attachments"]
    assert attachment["filename"] == "Skizze Rücken.jpg" and attachment["content_type"] == "image/jpeg"
    assert stored_attachment_digests(hooks) == [hashlib.sha256(photo).hexdigest()]


def _latin1_mail_with_photo(photo: bytes) -> bytes:
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage()
    msg["From"] = "Jürgen Groß <guest@example.org>"
    msg["To"] = "inkwell@mail.test"
    msg["Subject"] = "Skizze fürs Tattoo"
    msg["Date"] = "Fri, 20 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = new_id()
    msg.set_content("Grüße aus Köln, anbei meine Skizze für das Motiv.\n", charset="iso-8859-1", cte="8bit")
    msg.add_attachment(photo, maintype="image", subtype="jpeg", filename="Skizze Rücken.jpg")
    return msg.as_bytes(policy=SMTP)


@pytest.mark.parametrize("variant", VARIANTS)
def test_provider_retry_is_stored_once(hooks: RunningGateway, sns: SnsEmulator, variant: str) -> None:
    studio = hooks.add_studio("inkwell")
    raw = make_mail(message_id=new_id())
    for _ in range(2):  # a retry is a new request (Mailgun signs it with a fresh token)
        answer = send(hooks, build(variant, raw, studio.address, sns))
        assert answer.status_code == 200
    hooks.process()
    assert counts(hooks) == (2, 1)  # both deliveries kept raw, one message
    assert len(only_conversation(hooks, studio.token)["messages"]) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_mail_over_smtp_and_webhook_is_stored_once(hooks: RunningGateway, sns: SnsEmulator,
                                                       variant: str) -> None:
    studio = hooks.add_studio("inkwell")
    raw = _latin1_mail_with_photo(b"\x89PNG fake photo bytes" * 100)
    assert hooks.send(raw, studio.address).code == 250
    assert send(hooks, build(variant, raw, studio.address, sns)).status_code == 200
    hooks.process()
    assert counts(hooks) == (2, 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_webhook_and_smtp_give_the_same_conversation(hooks: RunningGateway, sns: SnsEmulator, variant: str) -> None:
    by_smtp, by_hook = hooks.add_studio("inkwell"), hooks.add_studio("nadelwerk")
    raw = make_mail(subject="Cover-up", body="Hallo!\n\nKönnt ihr ein Cover-up machen?\n\n-- \nLena",
                    attachments=[("alt.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(500)),
                                 ("Ärmel.pdf", "application/pdf", b"%PDF-1.4 " + bytes(300))])
    assert hooks.send(raw, by_smtp.address).code == 250
    assert send(hooks, build(variant, raw, by_hook.address, sns)).status_code == 200
    hooks.process()

    def shape(token: str) -> tuple[Any, ...]:
        detail = only_conversation(hooks, token)
        [m] = detail["messages"]
        guest = {k: v for k, v in detail["guest"].items() if k != "id"}  # two studios: two guest rows
        return (detail["subject"], guest, m["from"], m["subject"], m["text"], m["full_text"],
                m["message_id"], m["automatic"], [(a["filename"], a["content_type"], a["size"]) for a in m["attachments"]])

    assert shape(by_hook.token) == shape(by_smtp.token)


BAD_AUTH: dict[str, tuple[Callable[[bytes, str, SnsEmulator], p.Post], int]] = {
    "mailgun-bad-signature": (lambda raw, rcpt, sns: p.mailgun_post(p.mailgun_mime_form(raw, rcpt),
                                                                    key="key-some-other-account-000"), 401),
    "mailgun-unsigned": (lambda raw, rcpt, sns: _unsigned_mailgun(raw, rcpt), 401),
    "sendgrid-bad-signature": (lambda raw, rcpt, sns: p.sendgrid_post(
        p.sendgrid_raw_form(raw, [rcpt]), key=p.ec.generate_private_key(p.ec.SECP256R1())), 401),
    "sendgrid-no-password": (lambda raw, rcpt, sns: p.sendgrid_post(p.sendgrid_raw_form(raw, [rcpt]), auth=None), 401),
    "sendgrid-unsigned": (lambda raw, rcpt, sns: p.sendgrid_post(p.sendgrid_raw_form(raw, [rcpt]), signed=False), 401),
    "postmark-wrong-password": (lambda raw, rcpt, sns: p.postmark_post(
        p.with_raw_email({"OriginalRecipient": rcpt}, raw), auth=("postmark", "guessed-password")), 401),
    "postmark-no-auth": (lambda raw, rcpt, sns: p.postmark_post(p.with_raw_email({"OriginalRecipient": rcpt}, raw),
                                                                auth=None), 401),
    "ses-tampered": (lambda raw, rcpt, sns: _tampered_ses(sns, raw, rcpt), 403),
    "ses-foreign-topic": (lambda raw, rcpt, sns: ses_post(sns, raw, [rcpt], topic="arn:aws:sns:eu-west-1:999:other"), 403),
}


def _unsigned_mailgun(raw: bytes, rcpt: str) -> p.Post:
    body, content_type = p.encode_multipart(p.mailgun_mime_form(raw, rcpt))
    return p.Post("/webhooks/mailgun/mime", body, {"Content-Type": content_type})


def _tampered_ses(sns: SnsEmulator, raw: bytes, rcpt: str) -> p.Post:
    post = ses_post(sns, raw, [rcpt])
    message = p.json.loads(post.body)
    message["Message"] = message["Message"].replace("guest@example.org", "mallory@example.org")
    return p.Post(post.path, p.json.dumps(message).encode(), post.headers)


@pytest.mark.parametrize("case", list(BAD_AUTH))
def test_bad_authentication_stores_nothing_and_leaks_no_secret(hooks: RunningGateway, sns: SnsEmulator, case: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    studio = hooks.add_studio("inkwell")
    make, status = BAD_AUTH[case]
    caplog.set_level(logging.DEBUG)
    answer = send(hooks, make(make_mail(), studio.address, sns))
    assert answer.status_code == status
    assert counts(hooks) == (0, 0)
    for secret in SECRETS:
        assert secret not in answer.text and secret not in caplog.text


UNKNOWN_STUDIO = {"mailgun-mime": (406, None), "mailgun-parsed": (406, None), "sendgrid-raw": (200, "refused"),
                  "sendgrid-parsed": (200, "refused"), "postmark-raw": (403, None), "postmark-parsed": (403, None),
                  "ses": (404, None)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_unknown_studio_is_refused_the_way_the_provider_stops_retrying(hooks: RunningGateway, sns: SnsEmulator,
                                                                      variant: str) -> None:
    hooks.add_studio("inkwell")
    for rcpt in ("nobody@mail.test", "inkwell@other-domain.example"):
        answer = send(hooks, build(variant, make_mail(), rcpt, sns))
        status, body_status = UNKNOWN_STUDIO[variant]
        assert answer.status_code == status
        if body_status:
            assert answer.json()["status"] == body_status
    assert counts(hooks) == (0, 0)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "ses"])  # SNS caps messages at 256 KB
def test_oversize_mail_is_413_and_not_stored(hooks: RunningGateway, sns: SnsEmulator, variant: str) -> None:
    studio = hooks.add_studio("inkwell")
    raw = make_mail(attachments=[("big.bin", "application/octet-stream", b"\x00\x01" * (MAX_MESSAGE // 2 + 1000))])
    answer = send(hooks, build(variant, raw, studio.address, sns))
    assert answer.status_code == 413
    assert counts(hooks) == (0, 0)


def test_body_beyond_the_read_limit_is_413(hooks: RunningGateway) -> None:
    studio = hooks.add_studio("inkwell")
    post = p.mailgun_post(p.mailgun_mime_form(b"x" * (hooks.settings.webhook_max_body + 10), studio.address))
    assert send(hooks, post).status_code == 413
    assert counts(hooks) == (0, 0)


def test_inquiry_with_photos_beyond_litestars_10_mb_default_is_accepted(tmp_path: Path, sqlite_url: str,
                                                                       sns: SnsEmulator) -> None:
    running = start_gateway(webhook_settings(tmp_path, sqlite_url, sns, smtp_max_message_size=25 * 1024 * 1024))
    try:
        studio = running.add_studio("inkwell")
        photo = hashlib.sha256(b"seed").digest() * (9 * 1024 * 1024 // 32)  # 9 MB, 12 MB as base64
        raw = make_mail(attachments=[("arm.jpg", "image/jpeg", photo)])
        for post in (p.mailgun_post(p.mailgun_mime_form(raw, studio.address)),
                     p.postmark_post(postmark_payload(raw, recipient=studio.address))):
            assert len(post.body) > 10 * 1024 * 1024
            assert send(running, post).status_code == 200
        running.process()
        assert stored_attachment_digests(running) == [hashlib.sha256(photo).hexdigest()]
    finally:
        running.stop()


MALFORMED = {
    "mailgun-not-a-form": p.Post("/webhooks/mailgun", b'{"recipient": "x"}', {"Content-Type": "application/json"}),
    "postmark-not-json": p.postmark_post({}),
    "ses-not-json": p.Post("/webhooks/ses", b"<xml/>", {"Content-Type": "text/plain"}),
}


def test_malformed_payloads_are_400_with_a_clear_message(hooks: RunningGateway) -> None:
    hooks.add_studio("inkwell")
    broken_postmark = p.Post("/webhooks/postmark", b"{not json", MALFORMED["postmark-not-json"].headers)
    for post in (MALFORMED["mailgun-not-a-form"], broken_postmark, MALFORMED["ses-not-json"]):
        answer = send(hooks, post)
        assert answer.status_code == 400, post.path
        assert answer.json()["detail"]
    # signed correctly but missing the recipient, and a SendGrid post without its envelope
    form = p.mailgun_mime_form(make_mail(), "")
    del form.fields["recipient"]
    assert send(hooks, p.mailgun_post(form)).status_code == 400
    form = p.sendgrid_raw_form(make_mail(), ["inkwell@mail.test"])
    del form.fields["envelope"]
    answer = send(hooks, p.sendgrid_post(form))
    assert answer.status_code == 400 and "envelope" in answer.json()["detail"]
    assert counts(hooks) == (0, 0)


def test_mailgun_replayed_token_and_stale_timestamps_are_refused(hooks: RunningGateway) -> None:
    studio = hooks.add_studio("inkwell")
    form = p.mailgun_sign(p.mailgun_mime_form(make_mail(message_id=new_id()), studio.address))
    first = p.mailgun_post(form)
    assert send(hooks, first).status_code == 200
    assert send(hooks, first).status_code == 406  # same token again: refused, and Mailgun stops
    other = p.mailgun_mime_form(make_mail(message_id=new_id()), studio.address)
    reused = p.mailgun_post(other, token=form.text("token"))  # fresh signature, used token
    assert send(hooks, reused).status_code == 406
    import time as clock
    for skew in (-400, +400):
        stale = p.mailgun_post(p.mailgun_mime_form(make_mail(), studio.address), timestamp=int(clock.time()) + skew)
        answer = send(hooks, stale)
        assert answer.status_code == 401 and "stale" in answer.json()["detail"]
    assert counts(hooks)[0] == 1


def test_sendgrid_stale_signed_timestamp_is_refused(hooks: RunningGateway) -> None:
    import time as clock
    studio = hooks.add_studio("inkwell")
    post = p.sendgrid_post(p.sendgrid_raw_form(make_mail(), [studio.address]), timestamp=int(clock.time()) - 400)
    answer = send(hooks, post)
    assert answer.status_code == 401 and "stale" in answer.json()["detail"]
    assert counts(hooks) == (0, 0)


def test_providers_are_off_until_configured(tmp_path: Path, database_url: str, sns: SnsEmulator) -> None:
    running = start_gateway(make_settings(tmp_path, database_url))
    try:
        studio = running.add_studio("inkwell")
        for variant in ("mailgun-mime", "sendgrid-raw", "postmark-raw", "ses"):
            answer = send(running, build(variant, make_mail(), studio.address, sns))
            assert answer.status_code == 404 and "not enabled" in answer.json()["detail"]
        assert counts(running) == (0, 0)
    finally:
        running.stop()


@pytest.mark.parametrize("variant", VARIANTS)
def test_database_trouble_answers_503_then_the_retry_is_stored(tmp_path: Path, sqlite_url: str, sns: SnsEmulator,
                                                              variant: str) -> None:
    import sqlite3

    running = start_gateway(webhook_settings(tmp_path, sqlite_url, sns, db_busy_timeout=0.2))
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    try:
        studio = running.add_studio("inkwell")
        raw = make_mail(message_id=new_id())
        blocker.execute("BEGIN EXCLUSIVE")  # a stuck writer: nothing can be stored
        answer = send(running, build(variant, raw, studio.address, sns))
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        blocker.execute("ROLLBACK")
        assert send(running, build(variant, raw, studio.address, sns)).status_code == 200
        assert [r.status for r in running.process()] == ["done"]
        assert counts(running) == (1, 1)
    finally:
        blocker.close()
        running.stop()


def test_ses_subscription_is_logged_and_confirmed_only_when_configured(tmp_path: Path, database_url: str,
                                                                      sns: SnsEmulator) -> None:
    for auto_confirm in (False, True):
        running = start_gateway(webhook_settings(tmp_path / str(auto_confirm), database_url, sns,
                                                 ses_auto_confirm=auto_confirm))
        try:
            before = len(sns.requests)
            message = sns.sign(sns.subscription_confirmation(p.SES_TOPIC))
            answer = send(running, p.Post("/webhooks/ses", p.json.dumps(message).encode(), post_headers(message)))
            assert answer.status_code == 200
            confirmations = [r for r in sns.requests[before:] if "ConfirmSubscription" in r[1]]
            assert len(confirmations) == (1 if auto_confirm else 0)
            foreign = sns.sign(sns.subscription_confirmation("arn:aws:sns:eu-west-1:999:other"))
            refused = send(running, p.Post("/webhooks/ses", p.json.dumps(foreign).encode(), post_headers(foreign)))
            assert refused.status_code == 403
            assert [r for r in sns.requests[before:] if ":999:other" in r[1]] == []  # never confirmed
        finally:
            running.stop()


def test_ses_mail_over_the_size_limit_is_413(tmp_path: Path, sqlite_url: str, sns: SnsEmulator) -> None:
    running = start_gateway(webhook_settings(tmp_path, sqlite_url, sns, smtp_max_message_size=50_000))
    try:
        studio = running.add_studio("inkwell")
        raw = make_mail(attachments=[("skizze.png", "image/png", bytes(80_000))])  # SNS carries up to 150 KB
        answer = send(running, build("ses", raw, studio.address, sns))
        assert answer.status_code == 413 and "exceeds the limit" in answer.json()["detail"]
        assert counts(running) == (0, 0)
    finally:
        running.stop()


def test_postgres_going_away_answers_503_then_the_retry_is_stored(tmp_path: Path, pg_database_url: str,
                                                                  sns: SnsEmulator) -> None:
    from urllib.parse import urlparse

    from tests.tcp_proxy import TcpProxy

    url = urlparse(pg_database_url)
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxied = pg_database_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        running = start_gateway(webhook_settings(tmp_path, proxied, sns, db_busy_timeout=0.5))
        try:
            studio = running.add_studio("inkwell")
            raw = make_mail(message_id=new_id())
            proxy.block()
            for variant in ("mailgun-mime", "postmark-raw"):
                answer = send(running, build(variant, raw, studio.address, sns))
                assert answer.status_code == 503 and answer.headers["Retry-After"], variant
            proxy.unblock()
            assert send(running, build("mailgun-mime", raw, studio.address, sns)).status_code == 200
            assert [r.status for r in running.process()] == ["done"]
            assert counts(running) == (1, 1)
        finally:
            running.stop()


@pytest.mark.parametrize("key", ["not base64!", "aGVsbG8=", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"])
def test_a_malformed_sendgrid_key_stops_the_gateway_at_start_with_a_clear_error(tmp_path: Path, sqlite_url: str,
                                                                                key: str) -> None:
    from webhooks import webhook_handlers

    with pytest.raises(ValueError, match="GATEWAY_SENDGRID_VERIFICATION_KEY") as caught:
        webhook_handlers(make_settings(tmp_path, sqlite_url, sendgrid_verification_key=key))
    assert key not in str(caught.value)


def test_a_broken_ses_host_pattern_stops_the_gateway_at_start(tmp_path: Path, sqlite_url: str) -> None:
    from webhooks import webhook_handlers

    with pytest.raises(ValueError, match="GATEWAY_SES_CERT_HOST_PATTERN"):
        webhook_handlers(make_settings(tmp_path, sqlite_url, ses_topic_arns=p.SES_TOPIC,
                                       ses_cert_host_pattern="^sns\\.(unclosed$"))
