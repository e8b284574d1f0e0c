"""What gateway/outbound/signing.py relies on in dkimpy, and proof that its signatures stand on their own.

The RSA step of a signature is computed by OpenSSL while dkimpy signs for us (see
`_rsa_step_in_openssl`). These tests check that the outbox's signatures verify in a Python
process that never imported the gateway, that dkimpy is left exactly as it was, and they fail
with a message naming what changed when the dkimpy internals the swap relies on move.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.outbound import signing
from gateway.outbound.signing import DKIMPY_CHECKED, DkimSigner, generate_keypair
from tests.conftest import MAIL_DOMAIN
from tests.relay_sink import RelaySink
from tests.test_outbound import SELECTOR, inquiry, outbound_gateway, reply, send_due

MESSAGE = (b"From: Inkwell <inkwell@mail.test>\r\nTo: lena@example.org\r\nSubject: Re: Termin\r\n"
           b"Date: Fri, 20 Nov 2026 10:00:00 +0000\r\nMessage-ID: <a@mail.test>\r\n\r\nHallo\r\n")

# Run with -I: no gateway on sys.path, nothing imported but dkimpy and what it imports itself.
VERIFY_ELSEWHERE = """
import sys
import dkim
record, name = sys.argv[1].encode(), sys.argv[2].encode()
assert not any(m.startswith("gateway") for m in sys.modules)
print(dkim.verify(sys.stdin.buffer.read(), dnsfunc=lambda n, timeout=5: record if n == name else None))
"""


def dkimpy_is_untouched() -> bool:
    return dkim.RSASSA_PKCS1_v1_5_sign is dkim.crypto.RSASSA_PKCS1_v1_5_sign


def dkimpys_own_signature(signer: DkimSigner, message: bytes) -> bytes:
    """What plain dkimpy signs for the same key, headers and canonicalization."""
    plain = dkim.DKIM(message, signature_algorithm=signer.algorithm.encode(), linesep=b"\r\n")
    plain.should_sign, plain.frozen_sign = set(signer.SIGNED_HEADERS), set(signer.OVERSIGNED_HEADERS)
    return plain.sign(signer.selector.encode(), signer.domain.encode(), signer._key.for_dkimpy,
                      canonicalize=(b"relaxed", b"relaxed")) + message


class Spy:
    """Stands in for dkimpy's RSA step (and computes it): records what dkimpy hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, int]]] = []

    def __call__(self, digest: Any, private_key: dict[str, int]) -> bytes:
        self.calls.append((digest, private_key))
        return dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, private_key)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_outbox_signatures_verify_with_dkimpy_in_a_fresh_process(
        tmp_path: Path, database_url: str, kind: str) -> None:
    pair = generate_keypair(kind)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(pair.private_pem)
    key_file.chmod(0o600)
    with RelaySink() as sink:
        running = outbound_gateway(tmp_path, database_url, sink.url, dkim_selector=SELECTOR,
                                   dkim_private_key_file=key_file)
        try:
            studio, _, conversation = inquiry(running)
            reply(running, studio.token, conversation["id"])
            assert send_due(running) == 1
        finally:
            running.stop()
    [mail] = sink.received
    assert f"a={pair.algorithm};".encode() in mail.data.split(b"\r\n\r\n", 1)[0].replace(b" ", b"")
    assert dkimpy_is_untouched()
    checked = subprocess.run(
        [sys.executable, "-I", "-c", VERIFY_ELSEWHERE, pair.dns_record, f"{SELECTOR}._domainkey.{MAIL_DOMAIN}."],
        input=mail.data, capture_output=True, cwd=tmp_path, timeout=60, check=True)
    assert checked.stdout.decode().strip() == "True", checked.stderr.decode()


def test_dkimpy_is_a_version_the_rsa_step_was_checked_against() -> None:
    installed = version("dkimpy")
    assert installed in DKIMPY_CHECKED, (
        f"dkimpy {installed} is not one gateway/outbound/signing.py's RSA step was checked against "
        f"{DKIMPY_CHECKED}: read dkim.DomainSigner.gen_header and dkim.crypto.RSASSA_PKCS1_v1_5_sign "
        "in that version, then add it to DKIMPY_CHECKED (and widen pyproject.toml's bound if needed)")


def test_dkimpy_still_looks_up_its_rsa_step_where_it_is_swapped() -> None:
    step = dkim.crypto.RSASSA_PKCS1_v1_5_sign
    assert list(inspect.signature(step).parameters) == ["hash", "private_key"], (
        f"dkim.crypto.RSASSA_PKCS1_v1_5_sign{inspect.signature(step)} no longer takes (hash, private_key)")
    assert dkimpy_is_untouched(), "dkim.RSASSA_PKCS1_v1_5_sign is not dkim.crypto's: patched at import?"
    gen_header = dkim.DKIM.gen_header
    assert gen_header.__globals__ is vars(dkim) and "RSASSA_PKCS1_v1_5_sign" in gen_header.__code__.co_names, (
        "dkim.DKIM.gen_header no longer calls RSASSA_PKCS1_v1_5_sign through the dkim module's globals: "
        "swapping dkim.RSASSA_PKCS1_v1_5_sign would not reach it")
    assert "gen_header" in dkim.DKIM.sign.__code__.co_names, "dkim.DKIM.sign no longer signs through gen_header"
    assert "parse_pem_private_key" in dkim.DKIM.sign.__code__.co_names, (
        "dkim.DKIM.sign no longer parses the key with parse_pem_private_key (the dict handed to the RSA step)")


def test_dkimpy_hands_its_rsa_step_a_sha256_digest_and_the_parsed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    signer = DkimSigner(domain="mail.test", selector="sel", private_pem=pem)
    spy = Spy()
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", spy)
    dkimpys_own_signature(signer, MESSAGE)
    [(digest, private_key)] = spy.calls
    assert digest.name == "sha256" and len(digest.digest()) == 32, "the RSA step no longer gets a sha256 hash object"
    assert private_key["modulus"] == private.public_key().public_numbers().n, (
        "the RSA step's private_key is no longer dkim.crypto.parse_pem_private_key's dict with 'modulus'")
    # What signing.py calls when it loads a key, so a key dkimpy cannot use fails at start-up.
    with pytest.raises(dkim.crypto.UnparsableKeyError):
        dkim.crypto.parse_pem_private_key(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")


def test_rsa_step_in_openssl_gives_dkimpys_own_bytes_and_puts_dkimpy_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """PKCS#1 v1.5 is deterministic: OpenSSL must give the very bytes dkimpy's own code gives."""
    signer = DkimSigner(domain="mail.test", selector="sel", private_pem=generate_keypair("rsa").private_pem)
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000)  # the same t= tag in both signatures
    spy = Spy()
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", spy)
    fast = signer.sign(MESSAGE)
    assert spy.calls == [], "our own key went through dkimpy's pure-Python RSA"
    assert dkim.RSASSA_PKCS1_v1_5_sign is spy  # whatever was there before is back
    slow = dkimpys_own_signature(signer, MESSAGE)
    assert len(spy.calls) == 1
    assert fast == slow and b"t=1800000000" in fast


def test_other_keys_signing_during_the_swap_get_dkimpys_own_rsa_step(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = signing._load_key(generate_keypair("rsa").private_pem)
    other = DkimSigner(domain="mail.test", selector="sel", private_pem=generate_keypair("rsa").private_pem)
    spy = Spy()
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", spy)
    with signing._rsa_step_in_openssl(ours.openssl_rsa):
        assert dkim.RSASSA_PKCS1_v1_5_sign is not spy
        signed = dkimpys_own_signature(other, MESSAGE)  # someone else signing through dkimpy meanwhile
    assert len(spy.calls) == 1 and dkim.RSASSA_PKCS1_v1_5_sign is spy
    record = other.dns_record.encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)


def test_concurrent_signers_verify_and_leave_dkimpy_untouched() -> None:
    signers = [DkimSigner(domain="mail.test", selector="sel", private_pem=generate_keypair(kind).private_pem)
               for kind in ("rsa", "rsa", "ed25519")]

    def sign_many(signer: DkimSigner) -> list[tuple[bytes, str]]:
        return [(signer.sign(MESSAGE.replace(b"Hallo", b"Hallo %d" % i)), signer.dns_record) for i in range(30)]

    with ThreadPoolExecutor(max_workers=len(signers)) as pool:
        results = [signed for batch in pool.map(sign_many, signers) for signed in batch]
    assert dkimpy_is_untouched()
    for signed, record in results:
        assert dkim.verify(signed, dnsfunc=lambda name, timeout=5, r=record.encode(): r)
