"""gateway.outbound.signing: real dkimpy signatures, verified by dkimpy against the published TXT record."""
from __future__ import annotations

import re
import traceback
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.util import parse_tag_value

from gateway.outbound.signing import DkimSigner, KeyPair, SigningError, dns_txt_lines, generate_keypair

DOMAIN = "mail.test"
SELECTOR = "gw2025"
DNS_NAME = f"{SELECTOR}._domainkey.{DOMAIN}."


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def keypair(request: pytest.FixtureRequest) -> KeyPair:
    return generate_keypair(request.param)


@pytest.fixture(scope="module")
def signer(keypair: KeyPair) -> DkimSigner:
    return DkimSigner(domain=DOMAIN, selector=SELECTOR, private_pem=keypair.private_pem)


def reply(linesep: str = "\n") -> bytes:
    """A studio's answer to a guest, as the outbox would send it."""
    msg = EmailMessage()
    msg["From"] = Address("Inkwell Tattoo", "inkwell", "mail.test")
    msg["To"] = Address("Lena Vogel", "lena.vogel", "example.de")
    msg["Subject"] = "Re: Anfrage Unterarm – Größe"
    msg["Date"] = "Tue, 04 Mar 2025 10:15:00 +0100"
    msg["Message-ID"] = "<reply-7f3a@mail.test>"
    msg["In-Reply-To"] = "<CAF=guest-2@mail.example.de>"
    msg["References"] = "<CAF=guest-1@mail.example.de> <CAF=guest-2@mail.example.de>"
    msg["Reply-To"] = "reply+c41d9e@mail.test"
    text = ("Hallo Lena,\n\ndanke für deine Anfrage. Für ein Motiv dieser Größe am Unterarm planen "
            "wir etwa drei Stunden ein. Donnerstag um 14 Uhr wäre frei.\n\nViele Grüße\nMara\n")
    msg.set_content(text)
    msg.add_alternative(f"<html><body><p>{text.replace(chr(10), '<br>')}</p></body></html>",
                        subtype="html")
    msg.set_boundary("=_inkwell-7f3a")  # fixed, so two calls give the same bytes
    policy = SMTP if linesep == "\r\n" else msg.policy
    return msg.as_bytes(policy=policy)


def dns_from_zone_line(record: str):
    """A resolver serving what an operator pasted from dns_txt_lines() (strings concatenated)."""
    published = "".join(re.findall(r'"([^"]*)"', dns_txt_lines(SELECTOR, DOMAIN, record)))

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return published.encode() if name == DNS_NAME.encode() else None
    return dnsfunc


def signature_tags(signed: bytes) -> dict[bytes, bytes]:
    name, value = dkim.rfc822_parse(signed)[0][0]
    assert name == b"DKIM-Signature"
    return parse_tag_value(value)


def signed_headers(signed: bytes) -> list[str]:
    return [h.strip().decode() for h in signature_tags(signed)[b"h"].split(b":")]


def test_signed_reply_verifies(keypair: KeyPair, signer: DkimSigner) -> None:
    message = reply()
    signed = signer.sign(message)
    assert dkim.verify(signed, dnsfunc=dns_from_zone_line(keypair.dns_record))
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(message)


def test_wrong_published_key_does_not_verify(keypair: KeyPair, signer: DkimSigner) -> None:
    # Same kind: dkimpy 1.1.8 raises nacl's ValueError (not False) for an RSA signature
    # checked against an Ed25519 record.
    other = generate_keypair("rsa" if keypair.algorithm.startswith("rsa") else "ed25519")
    assert not dkim.verify(signer.sign(reply()), dnsfunc=dns_from_zone_line(other.dns_record))


def test_signature_tags(keypair: KeyPair, signer: DkimSigner) -> None:
    tags = signature_tags(signer.sign(reply()))
    assert tags[b"a"] == keypair.algorithm.encode()
    assert tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == DOMAIN.encode()
    assert tags[b"s"] == SELECTOR.encode()
    assert b"l" not in tags  # a body length limit would let anyone append content


def test_h_lists_present_headers_and_from_twice(signer: DkimSigner) -> None:
    h = signed_headers(signer.sign(reply()))
    assert {"from", "to", "subject", "date", "message-id", "in-reply-to", "references",
            "reply-to", "mime-version", "content-type"} <= set(h)
    # Over-signing is proven here, not by test_added_second_from_fails alone: dkimpy's own
    # verifier appends an extra "from" to h= when checking (its bug #644046 fix), others don't.
    assert h.count("from") == 2
    assert "cc" not in h and "auto-submitted" not in h  # absent: not listed


@pytest.mark.parametrize("linesep", ["\n", "\r\n"])
def test_keeps_the_message_line_endings(keypair: KeyPair, signer: DkimSigner, linesep: str) -> None:
    message = reply(linesep)
    signed = signer.sign(message)
    header = signed[:len(signed) - len(message)]
    assert header.startswith(b"DKIM-Signature: ") and header.endswith(linesep.encode())
    if linesep == "\n":
        assert b"\r" not in header
    else:
        assert b"\n" not in header.replace(b"\r\n", b"")
    assert dkim.verify(signed, dnsfunc=dns_from_zone_line(keypair.dns_record))


def test_changed_body_fails(keypair: KeyPair, signer: DkimSigner) -> None:
    signed = signer.sign(reply())
    tampered = signed.replace(b"Donnerstag um 14 Uhr", b"Freitag um 9 Uhr", 1)
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns_from_zone_line(keypair.dns_record))
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(tampered).verify(dnsfunc=dns_from_zone_line(keypair.dns_record))


def test_changed_subject_fails(keypair: KeyPair, signer: DkimSigner) -> None:
    signed = signer.sign(reply())
    head, sep, body = signed.partition(b"\n\n")
    new_head = re.sub(rb"(?m)^Subject:.*$", b"Subject: Re: Anfrage Unterarm - bezahlt", head)
    assert new_head != head
    tampered = new_head + sep + body
    assert not dkim.verify(tampered, dnsfunc=dns_from_zone_line(keypair.dns_record))


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_added_second_from_fails(keypair: KeyPair, signer: DkimSigner, where: str) -> None:
    signed = signer.sign(reply())
    forged = b"From: Inkwell Tattoo <payments@evil.example>\n"
    head, sep, body = signed.partition(b"\n\n")
    tampered = forged + signed if where == "top" else head + b"\n" + forged.rstrip(b"\n") + sep + body
    assert not dkim.verify(tampered, dnsfunc=dns_from_zone_line(keypair.dns_record))


def test_message_without_from_is_refused(signer: DkimSigner) -> None:
    message = re.sub(rb"(?m)^From:.*\n", b"", reply())
    with pytest.raises(SigningError, match="From"):
        signer.sign(message)


def test_dns_record_format() -> None:
    rsa_pair = generate_keypair("rsa")
    ed_pair = generate_keypair("ed25519")
    assert rsa_pair.algorithm == "rsa-sha256"
    assert rsa_pair.dns_record.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # SPKI of RSA-2048
    assert rsa_pair.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert ed_pair.algorithm == "ed25519-sha256"
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed_pair.dns_record)  # 32 raw bytes
    assert ed_pair.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(rsa_pair) and "PRIVATE" not in repr(ed_pair)


def test_signer_publishes_the_same_record(keypair: KeyPair, signer: DkimSigner) -> None:
    assert signer.dns_record == keypair.dns_record
    assert signer.algorithm == keypair.algorithm


def test_pkcs1_rsa_and_dknewkey_ed25519_seed_are_read() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = private.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
    seed = b"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n"  # RFC 8463 appendix A example key
    for key in (pkcs1, seed):
        s = DkimSigner(domain=DOMAIN, selector=SELECTOR, private_pem=key)
        assert dkim.verify(s.sign(reply()), dnsfunc=dns_from_zone_line(s.dns_record))
    # RFC 8463 appendix A publishes this public key for that private key
    assert DkimSigner(domain=DOMAIN, selector=SELECTOR, private_pem=seed).dns_record == (
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")


def test_from_file(tmp_path: Path, keypair: KeyPair) -> None:
    path = tmp_path / "dkim.key"
    path.write_bytes(keypair.private_pem)
    path.chmod(0o600)
    s = DkimSigner.from_file(domain=DOMAIN, selector=SELECTOR, path=path)
    assert dkim.verify(s.sign(reply()), dnsfunc=dns_from_zone_line(keypair.dns_record))


def assert_no_key_material(exc: BaseException, key: bytes) -> None:
    text = "".join(traceback.format_exception(exc))
    body = [line for line in key.decode(errors="replace").splitlines() if not line.startswith("-----")]
    for line in body:
        for i in range(0, max(len(line) - 12, 1), 6):  # any 12-character fragment of the key
            assert line[i:i + 12] not in text, "key material in the error"


def truncated_rsa_pem() -> bytes:
    pem = generate_keypair("rsa").private_pem
    return pem[:len(pem) // 2] + b"\n-----END PRIVATE KEY-----\n"


def ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def encrypted_pem() -> bytes:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(b"hunter22"))


def rsa_512_pem() -> bytes:
    """A 512-bit key (cryptography refuses to generate one), built from two fixed primes."""
    p = 88950348513946724240159217746291646418687288495066390845472253517958763980457
    q = 94571497610482947003398173056332018198707125252942115705840427470597973573597
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key().private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())


@pytest.mark.parametrize(("make_key", "reason"), [
    (truncated_rsa_pem, "not a valid PEM"),
    (lambda: b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "neither PEM nor"),
    (lambda: b"", "empty"),
    (ec_pem, "RSA or Ed25519"),
    (encrypted_pem, "encrypted"),
    (rsa_512_pem, "512 bits"),
])
def test_bad_key_raises_without_key_material(make_key, reason: str) -> None:
    key = make_key()
    with pytest.raises(SigningError, match=reason) as info:
        DkimSigner(domain=DOMAIN, selector=SELECTOR, private_pem=key)
    assert_no_key_material(info.value, key)


def test_unreadable_or_invalid_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(SigningError, match="missing.key"):
        DkimSigner.from_file(domain=DOMAIN, selector=SELECTOR, path=missing)
    with pytest.raises(SigningError, match=re.escape(str(tmp_path))):
        DkimSigner.from_file(domain=DOMAIN, selector=SELECTOR, path=tmp_path)  # a directory
    bad = tmp_path / "bad.key"
    key = truncated_rsa_pem()
    bad.write_bytes(key)
    with pytest.raises(SigningError, match="bad.key") as info:
        DkimSigner.from_file(domain=DOMAIN, selector=SELECTOR, path=bad)
    assert_no_key_material(info.value, key)


@pytest.mark.parametrize(("domain", "selector"), [
    ("mail.test; x=1", SELECTOR), (DOMAIN, "sel ector"), ("bücher.example", SELECTOR), ("", SELECTOR),
])
def test_bad_names_are_refused(domain: str, selector: str) -> None:
    with pytest.raises(SigningError):
        DkimSigner(domain=domain, selector=selector, private_pem=generate_keypair("ed25519").private_pem)


def test_generate_keypair_refuses_bad_arguments() -> None:
    with pytest.raises(SigningError, match="kind"):
        generate_keypair("dsa")
    with pytest.raises(SigningError, match="512"):
        generate_keypair("rsa", bits=512)


def test_dns_txt_lines_splits_long_records() -> None:
    record = "v=DKIM1; k=rsa; p=" + "A" * 718  # as long as an RSA-4096 record
    line = dns_txt_lines(SELECTOR, DOMAIN + ".", record)
    assert line.startswith(f"{DNS_NAME} IN TXT ( \"") and line.endswith("\" )")
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 3
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == record


def test_dns_txt_lines_real_records() -> None:
    for pair, count in ((generate_keypair("rsa"), 2), (generate_keypair("ed25519"), 1)):
        strings = re.findall(r'"([^"]*)"', dns_txt_lines(SELECTOR, DOMAIN, pair.dns_record))
        assert len(strings) == count and all(len(s) <= 255 for s in strings)
        assert "".join(strings) == pair.dns_record


def test_dns_txt_lines_refuses_non_ascii() -> None:
    with pytest.raises(SigningError):
        dns_txt_lines(SELECTOR, DOMAIN, "v=DKIM1; n=Größe")
