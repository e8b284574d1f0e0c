"""Webhook signing secrets: made, encrypted at rest, and the Stripe-like signature header.

A secret signs every post, so the gateway must be able to read it back: it cannot be hashed
like an API token. It is stored encrypted with AES-GCM under a key derived by HKDF-SHA256 from
the instance's secret key (GATEWAY_SECRET_KEY or its generated file): a copy of the database
alone (a backup, a dump in a ticket) then reveals no secret. AES-GCM rather than Fernet because
it takes associated data: each ciphertext is bound to its studio, so a row copied into another
studio's endpoint does not decrypt. HKDF with its own `info` keeps this key apart from the
other uses of the instance secret (reply addresses, deletion codes), which HMAC with it
directly.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "whsec_"
_INFO = b"gateway webhook endpoint secrets v1"
_NONCE = 12


def new_secret() -> str:
    """32 random bytes, readable: `whsec_` and 43 URL-safe characters."""
    return PREFIX + secrets.token_urlsafe(32)


def _key(instance_secret: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(instance_secret))


def encrypt(instance_secret: bytes, studio_id: int, secret: str) -> str:
    nonce = os.urandom(_NONCE)
    sealed = _key(instance_secret).encrypt(nonce, secret.encode(), f"studio:{studio_id}".encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def decrypt(instance_secret: bytes, studio_id: int, stored: str) -> str:
    """Raises cryptography's InvalidTag for a changed instance key or a row of another studio."""
    raw = base64.urlsafe_b64decode(stored.encode())
    return _key(instance_secret).decrypt(raw[:_NONCE], raw[_NONCE:], f"studio:{studio_id}".encode()).decode()


def signature_header(secrets_: list[str], timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]`: HMAC-SHA256 of "t.body" under each secret still
    valid, as Stripe signs, so a receiver mid-rotation accepts whichever secret it holds."""
    signed = str(timestamp).encode() + b"." + body
    parts = [f"t={timestamp}"] + [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets_]
    return ",".join(parts)
