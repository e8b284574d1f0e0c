"""Posting to our webhooks as the providers do: their payload formats and signature schemes.

Only the providers are emulated here, at their HTTP boundary; the gateway under test is real.
Parsed-field payloads come from the builders in tests/test_webhook_compose.py; this module
adds the raw-MIME variants, the HTTP encoding and each provider's authentication.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhooks.forms import Form

MAILGUN_KEY = "key-mailgun-signing-0123456789abcdef"
SENDGRID_AUTH = ("sendgrid", "parse-password-0123456789")
POSTMARK_AUTH = ("postmark", "inbound-password-0123456789")
SES_TOPIC = "arn:aws:sns:eu-west-1:123456789012:studio-inbound"


@dataclass
class Post:
    """One HTTP request as the provider sends it."""

    path: str
    body: bytes
    headers: dict[str, str]


def encode_multipart(form: Form) -> tuple[bytes, str]:
    """multipart/form-data exactly as the bytes in `form` (fields keep their own charset)."""
    boundary = "----provider" + uuid.uuid4().hex
    parts: list[bytes] = []
    for name, values in form.fields.items():
        for value in values:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                         + value + b"\r\n")
    for name, files in form.files.items():
        for part in files:
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                    f'filename="{part.filename}"\r\nContent-Type: {part.content_type}\r\n\r\n')
            parts.append(head.encode("utf-8") + part.data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- Mailgun: HMAC-SHA256(signing key, timestamp + token), hex ------------------------------

def mailgun_sign(form: Form, key: str = MAILGUN_KEY, *, timestamp: int | None = None,
                 token: str | None = None) -> Form:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    tok = token or secrets.token_hex(25)  # Mailgun's tokens are 50 random characters
    form.fields["timestamp"] = [ts.encode()]
    form.fields["token"] = [tok.encode()]
    form.fields["signature"] = [hmac.new(key.encode(), (ts + tok).encode(), hashlib.sha256).hexdigest().encode()]
    return form


def mailgun_mime_form(raw: bytes, recipient: str, sender: str = "guest@example.org") -> Form:
    """The fields Mailgun posts to a forward() URL ending in "mime"."""
    return Form(fields={"recipient": [recipient.encode()], "sender": [sender.encode()],
                        "body-mime": [raw]})


def mailgun_post(form: Form, *, mime: bool = True, key: str = MAILGUN_KEY, **sign: Any) -> Post:
    if "signature" not in form.fields:
        mailgun_sign(form, key, **sign)
    body, content_type = encode_multipart(form)
    return Post("/webhooks/mailgun/mime" if mime else "/webhooks/mailgun", body, {"Content-Type": content_type})


# --- SendGrid: ECDSA P-256 over timestamp + body, and/or basic auth ------------------------

@lru_cache(maxsize=1)
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key() -> str:
    """The verification key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = sendgrid_key().public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def sendgrid_raw_form(raw: bytes, recipients: list[str], sender: str = "guest@example.org") -> Form:
    """"POST the raw, full MIME message": the message in `email`, plus envelope and charsets."""
    return Form(fields={
        "email": [raw], "to": [", ".join(recipients).encode()], "from": [sender.encode()],
        "envelope": [json.dumps({"to": recipients, "from": sender}).encode()],
        "charsets": [json.dumps({"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8"}).encode()],
        "SPF": [b"pass"], "dkim": [b"{@example.org : pass}"], "sender_ip": [b"192.0.2.10"],
    })


def sendgrid_post(form: Form, *, auth: tuple[str, str] | None = SENDGRID_AUTH, signed: bool = True,
                  timestamp: int | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> Post:
    body, content_type = encode_multipart(form)
    headers = {"Content-Type": content_type}
    if auth:
        headers["Authorization"] = basic(*auth)
    if signed:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = (key or sendgrid_key()).sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers["X-Twilio-Email-Event-Webhook-Signature"] = base64.b64encode(signature).decode()
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = ts
    return Post("/webhooks/sendgrid", body, headers)


# --- Postmark: JSON, basic auth from the webhook URL ---------------------------------------

def postmark_post(payload: dict[str, Any], *, auth: tuple[str, str] | None = POSTMARK_AUTH) -> Post:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = basic(*auth)
    return Post("/webhooks/postmark", json.dumps(payload).encode(), headers)


def with_raw_email(payload: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The payload with "Include raw email content in JSON payload" enabled."""
    return {**payload, "RawEmail": raw.decode("utf-8", "surrogateescape")}
