"""Webhook authentication before the body (issue 13): a caller without credentials is refused
from the headers alone, and an SNS message of a topic we don't take never makes us fetch a
certificate. Over real HTTP to a running gateway; the SNS side is tests/sns_emulator.py."""
from __future__ import annotations

import base64
import json
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests import providers as p
from tests.conftest import RunningGateway, start_gateway
from tests.mail import make_mail
from tests.sns_emulator import Response, SnsEmulator, post_headers, ses_received
from tests.test_webhooks import counts, webhook_settings

DECLARED = 8 * 1024 * 1024        # a large body, within the route's read limit
SENT = 1024                       # of which only this much ever comes


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsEmulator]:
    with SnsEmulator() as emulator:
        yield emulator


@pytest.fixture
def hooks(tmp_path: Path, database_url: str, sns: SnsEmulator) -> Iterator[RunningGateway]:
    running = start_gateway(webhook_settings(tmp_path, database_url, sns))
    yield running
    running.stop()


def _status_before_the_body(running: RunningGateway, path: str, headers: dict[str, str]) -> int:
    """POST `path` declaring DECLARED bytes, send SENT of them, and read the answer: it can
    only come while the rest is missing if the server decided without reading the body. The
    socket timeout is the generous bound of a server that waits for the body instead."""
    host, port = running.gateway.http_address  # type: ignore[misc]
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {DECLARED}",
            *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall("\r\n".join(head).encode() + b"x" * SENT)
        try:
            status_line = sock.makefile("rb").readline()
        except TimeoutError:
            pytest.fail("the server waited for the body before refusing the credentials")
    return int(status_line.split()[1])


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("path, content_type", [
    ("/webhooks/postmark", "application/json"),
    ("/webhooks/sendgrid", "multipart/form-data; boundary=xyz"),
])
@pytest.mark.parametrize("authorization", [None, "wrong"])
def test_wrong_basic_auth_is_refused_before_the_body_is_read(hooks: RunningGateway, path: str,
                                                            content_type: str, authorization: str | None) -> None:
    headers = {"Content-Type": content_type}
    if authorization:
        headers["Authorization"] = _basic("someone", "not-the-password")
    assert _status_before_the_body(hooks, path, headers) == 401
    assert counts(hooks) == (0, 0)


def test_sendgrid_without_signature_headers_is_refused_before_the_body(hooks: RunningGateway) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=xyz",
               "Authorization": _basic(*p.SENDGRID_AUTH)}    # right password, no signature
    assert _status_before_the_body(hooks, "/webhooks/sendgrid", headers) == 401


def test_right_credentials_still_deliver(hooks: RunningGateway) -> None:
    studio = hooks.add_studio("inkwell")
    post = p.postmark_post({"OriginalRecipient": studio.address, "RawEmail": make_mail().decode(),
                            "From": "guest@example.org"})
    answer = hooks.api(None).post(post.path, content=post.body, headers=post.headers)
    assert answer.status_code == 200, answer.text
    assert counts(hooks)[0] == 1


def test_a_foreign_sns_topic_is_refused_without_fetching_a_certificate(hooks: RunningGateway,
                                                                       sns: SnsEmulator) -> None:
    """AWS signs messages of anyone's topic; one of a topic we don't take must cost no request."""
    studio = hooks.add_studio("inkwell")
    path = f"/SimpleNotificationService-{uuid.uuid4().hex}.pem"
    cert_url = sns.serve(path, Response(200, sns.signing_key.cert_pem))
    foreign = "arn:aws:sns:eu-west-1:999999999999:someone-elses"
    message = sns.sign(sns.notification(ses_received(make_mail(), [studio.address], foreign), foreign))
    message["SigningCertURL"] = cert_url      # not signed: the certificate SNS names is its choice
    answer = hooks.api(None).post("/webhooks/ses", content=json.dumps(message).encode(),
                                  headers=post_headers(message))
    assert answer.status_code == 403
    assert "topic" in answer.json()["detail"]
    assert sns.fetches(path) == 0
    assert counts(hooks) == (0, 0)
