"""Webhook mail carries the provider's SPF/DKIM/DMARC verdicts, not ours and not the sender's.

Each provider is emulated at its HTTP boundary (tests/providers.py, tests/sns_emulator.py) with
the verdict fields it really sends; the gateway is real.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from gateway.store.db import read_tx
from gateway.store.tables import MESSAGE
from tests import providers as p
from tests.conftest import RunningGateway
from tests.mail import make_mail, new_id
from tests.sns_emulator import SnsEmulator, post_headers, ses_received
from tests.test_webhook_compose import postmark_payload
from tests.test_webhooks import build, hooks, send, sns  # noqa: F401  (fixtures)


def _stored(running: RunningGateway) -> list[dict[str, Any]]:
    with read_tx(running.engine) as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(MESSAGE).where(MESSAGE.c.direction == "inbound").order_by(MESSAGE.c.id))]


def _ses(sns: SnsEmulator, raw: bytes, recipient: str, **verdicts: str) -> p.Post:
    notification = json.loads(ses_received(raw, [recipient], p.SES_TOPIC, source="guest@example.org"))
    for key, status in verdicts.items():
        notification["receipt"][key] = {"status": status}
    message = sns.sign(sns.notification(json.dumps(notification), p.SES_TOPIC))
    return p.Post("/webhooks/ses", json.dumps(message).encode(), post_headers(message))


def test_sendgrids_spf_and_dkim_fields_are_recorded(hooks: RunningGateway, sns: SnsEmulator) -> None:
    studio = hooks.add_studio("inkwell")
    assert send(hooks, build("sendgrid-raw", make_mail(), studio.address, sns)).status_code == 200
    hooks.process()
    [message] = _stored(hooks)
    assert message["authentication_results"] == (
        "mail.test; spf=pass (reported by sendgrid) smtp.mailfrom=example.org; "
        "dkim=pass (reported by sendgrid) header.d=example.org; dmarc=none (reported by sendgrid) "
        "header.from=example.org")
    detail = hooks.api(studio.token).get(f"/api/v1/conversations/{message['conversation_id']}").json()
    assert detail["messages"][0]["authentication"]["dkim"] == "pass"


def test_ses_verdicts_are_recorded_and_a_dmarc_failure_holds_a_reply(hooks: RunningGateway,
                                                                      sns: SnsEmulator) -> None:
    studio = hooks.add_studio("inkwell")
    first = new_id()
    assert send(hooks, _ses(sns, make_mail(message_id=first), studio.address)).status_code == 200
    forged = make_mail(subject="Re: Tattoo Anfrage", in_reply_to=first, body="Neue Kontonummer ...")
    assert send(hooks, _ses(sns, forged, studio.address, spfVerdict="FAIL", dkimVerdict="GRAY",
                            dmarcVerdict="FAIL")).status_code == 200
    hooks.process()
    genuine, held = _stored(hooks)
    assert genuine["state"] == "visible" and "dmarc=pass" in genuine["authentication_results"]
    assert held["state"] == "held" and held["conversation_id"] == genuine["conversation_id"]
    assert "spf=fail" in held["authentication_results"] and "dmarc=fail" in held["authentication_results"]


def test_ses_processing_failure_is_no_verdict(hooks: RunningGateway, sns: SnsEmulator) -> None:
    studio = hooks.add_studio("inkwell")
    first = new_id()
    send(hooks, _ses(sns, make_mail(message_id=first), studio.address))
    send(hooks, _ses(sns, make_mail(subject="Re: x", in_reply_to=first), studio.address,
                     spfVerdict="PROCESSING_FAILED", dmarcVerdict="PROCESSING_FAILED"))
    hooks.process()
    assert [m["state"] for m in _stored(hooks)] == ["visible", "visible"]
    assert "dmarc=temperror" in _stored(hooks)[1]["authentication_results"]


def test_mailguns_spf_field_is_recorded(hooks: RunningGateway, sns: SnsEmulator) -> None:
    studio = hooks.add_studio("inkwell")
    form = p.mailgun_mime_form(make_mail(), studio.address)
    form.fields["X-Mailgun-Spf"] = [b"Pass"]
    form.fields["X-Mailgun-Dkim-Check-Result"] = [b"Fail"]
    assert send(hooks, p.mailgun_post(form)).status_code == 200
    hooks.process()
    [message] = _stored(hooks)
    assert "spf=pass (reported by mailgun)" in message["authentication_results"]
    assert "dkim=fail (reported by mailgun)" in message["authentication_results"]


def test_postmarks_received_spf_is_its_topmost_one(hooks: RunningGateway, sns: SnsEmulator) -> None:
    studio = hooks.add_studio("inkwell")
    payload = postmark_payload(make_mail(), recipient=studio.address)
    payload["Headers"] = [{"Name": "Received-SPF", "Value": "Fail (sender not authorised) identity=mailfrom"},
                          {"Name": "Received-SPF", "Value": "Pass (written by the sender)"}, *payload["Headers"]]
    assert send(hooks, p.postmark_post(payload)).status_code == 200
    hooks.process()
    [message] = _stored(hooks)
    assert "spf=fail (reported by postmark)" in message["authentication_results"]


@pytest.mark.parametrize("variant", ["mailgun-mime", "mailgun-parsed"])
def test_verdict_headers_inside_the_message_are_not_believed(hooks: RunningGateway, sns: SnsEmulator,
                                                             variant: str) -> None:
    """A sender can write any header; only the provider's own fields count (Postmark's own
    Received-SPF is the topmost: test_postmarks_received_spf_is_its_topmost_one)."""
    studio = hooks.add_studio("inkwell")
    raw = make_mail(headers={"Authentication-Results": "mx.example; spf=pass; dkim=pass; dmarc=pass",
                             "X-Mailgun-Spf": "Pass", "Received-SPF": "Pass"})
    assert send(hooks, build(variant, raw, studio.address, sns)).status_code == 200
    hooks.process()
    [message] = _stored(hooks)
    assert "spf=none" in message["authentication_results"] and "dmarc=none" in message["authentication_results"]
