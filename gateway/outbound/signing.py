"""DKIM signing of outbound mail (RFC 6376; Ed25519 per RFC 8463), on dkimpy.

One `DkimSigner` per (domain, selector) lives as long as the outbox worker; `sign()` returns
the message with a `DKIM-Signature:` header in front, canonicalization relaxed/relaxed, From
signed twice so nobody can add a second From later (without that, a receiving MUA may show
an added From while the signature still verifies).

Keys are PKCS#8 PEM for both algorithms (what `generate_keypair` writes and
`openssl genpkey -algorithm RSA|ed25519` produces); PKCS#1 RSA PEM and the base64 Ed25519
seed that dkimpy's `dknewkey` writes are read too. Ed25519 needs PyNaCl, an optional
dependency of dkimpy. As far as we know Gmail and Microsoft do not verify Ed25519 yet, so an
Ed25519 signature helps only next to an RSA one (two signers, two selectors).

Cost per message, measured with a 4 KB (3,959-byte) multipart reply on the dev container
(Python 3.11, dkimpy 1.1.8, PyNaCl 1.6.2; median of 300):

    RSA-2048   ~0.65 ms with the RSA step in OpenSSL (_rsa_step_in_openssl); ~5.8 ms with dkimpy's
               own pure-Python RSA (two 1024-bit `pow`s) (bench/outbound.py, 8.5 KB reply)
    Ed25519    ~0.23 ms (libsodium via PyNaCl; mostly dkimpy parsing and hashing)

dkimpy's API takes the key as PEM bytes and parses it on every call (~0.1 ms for RSA, ~15 µs
for Ed25519); this module parses and checks the key once in `__init__` so a bad key fails at
start-up, and hands dkimpy the form it parses fastest (PKCS#1 for RSA). Each of the two RSA
`pow`s held the GIL for ~2.8 ms, even in a worker thread, stalling the servers of the same
process; hence the OpenSSL path for the RSA step, the one place this module reaches into
dkimpy's internals (`_rsa_step_in_openssl`, checked against `DKIMPY_CHECKED`).
"""
from __future__ import annotations

import base64
import binascii
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import dkim
import dkim.crypto
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048;
# verifiers need only handle up to 4096, larger keys may not verify anywhere.
RSA_MIN_BITS = 1024
RSA_MAX_BITS = 4096
# RFC 1035 §3.3: one <character-string> in a TXT record holds at most 255 octets; longer
# values are several strings that verifiers concatenate (RFC 6376 §3.6.2.2).
TXT_STRING_MAX = 255

# Selectors and signing domains go into DKIM-Signature tags and DNS names: dot-separated
# labels only (RFC 6376 §3.1 / §3.5); `_` is allowed because real selectors use it.
_LABELS_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                        r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*")
_RSA = b"rsa-sha256"
_ED25519 = b"ed25519-sha256"


class SigningError(ValueError):
    """A key, name or message that cannot be used for DKIM. The text never holds key material."""


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes = field(repr=False)  # PKCS#8 PEM for RSA and Ed25519; kept out of repr()/logs
    dns_record: str                         # TXT value to publish at <selector>._domainkey.<domain>
    algorithm: str                          # "rsa-sha256" | "ed25519-sha256"


@dataclass(frozen=True)
class _Key:
    algorithm: bytes     # the a= value
    for_dkimpy: bytes    # the form dkimpy's sign() parses: PKCS#1 PEM, or base64 Ed25519 seed
    dns_record: str
    openssl_rsa: rsa.RSAPrivateKey | None = field(default=None, repr=False)  # for the RSA step


def generate_keypair(kind: str = "rsa", bits: int = 2048) -> KeyPair:
    """A new DKIM key. `bits` applies to RSA only (1024–4096; use 2048, RFC 8301)."""
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise SigningError(f"RSA key size must be {RSA_MIN_BITS}–{RSA_MAX_BITS} bits, not {bits}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise SigningError(f"unknown DKIM key kind {kind!r}: use 'rsa' or 'ed25519'")
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key = _from_private_key(private)
    return KeyPair(private_pem=pem, dns_record=key.dns_record, algorithm=key.algorithm.decode())


class DkimSigner:
    """Signs outbound mail for one domain and selector. Safe to share between threads."""

    # Signed when present, in message order; absent ones are not listed in h=. Sender and
    # List-Unsubscribe(-Post) would belong here if the gateway ever sends them (RFC 8058 §4
    # requires the latter two to be signed).
    SIGNED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to",
                      b"references", b"reply-to", b"mime-version", b"content-type",
                      b"content-transfer-encoding", b"auto-submitted")
    # Listed once more in h= than they occur, so adding one breaks the signature (RFC 6376 §8.15).
    OVERSIGNED_HEADERS = (b"from",)

    def __init__(self, *, domain: str, selector: str, private_pem: bytes) -> None:
        self.domain = _check_name("domain", domain.rstrip("."))
        self.selector = _check_name("selector", selector)
        key = _load_key(private_pem)
        self.algorithm = key.algorithm.decode()
        self.dns_record = key.dns_record  # what must be published for this key; handy for a CLI
        self._key = key

    @classmethod
    def from_file(cls, *, domain: str, selector: str, path: Path) -> DkimSigner:
        """A signer for the key stored at `path`.

        Keep the file readable by the gateway user only (mode 0600 or 0640): anyone who can
        read it can sign mail as `domain`. This is not enforced, because secret mounts in
        containers often show 0644 on files no other user can reach; check it at deployment.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise SigningError(f"cannot read DKIM key file {path}: "
                               f"{exc.strerror or type(exc).__name__}") from None
        try:
            return cls(domain=domain, selector=selector, private_pem=data)
        except SigningError as exc:
            raise SigningError(f"DKIM key file {path}: {exc}") from None

    def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature header prepended, in the message's own line endings."""
        first_lf = message.find(b"\n")
        linesep = b"\r\n" if first_lf > 0 and message[first_lf - 1] == 0x0D else b"\n"
        try:
            signer = dkim.DKIM(message, signature_algorithm=self._key.algorithm, linesep=linesep)
            # dkimpy's default header choice picks the present ones among should_sign and
            # appends one more of each frozen_sign header: exactly "present only, From twice".
            signer.should_sign = set(self.SIGNED_HEADERS)
            signer.frozen_sign = set(self.OVERSIGNED_HEADERS)
            with _rsa_step_in_openssl(self._key.openssl_rsa):
                header = signer.sign(self.selector.encode(), self.domain.encode(), self._key.for_dkimpy,
                                     canonicalize=(b"relaxed", b"relaxed"))
        except dkim.DKIMException as exc:  # no From header, malformed header block, ...
            raise SigningError(f"cannot DKIM-sign message: {exc}") from exc
        return header + message

    def __repr__(self) -> str:
        return f"DkimSigner(domain={self.domain!r}, selector={self.selector!r}, algorithm={self.algorithm!r})"


def dns_txt_lines(selector: str, domain: str, record: str) -> str:
    """The zone-file line an operator publishes: the record cut into ≤ 255-octet strings.

    >>> dns_txt_lines("s1", "example.org", "v=DKIM1; k=ed25519; p=AAAA")
    's1._domainkey.example.org. IN TXT ( "v=DKIM1; k=ed25519; p=AAAA" )'
    """
    if not record.isascii() or not record.isprintable():
        raise SigningError("a DKIM TXT record holds printable ASCII only")
    name = f"{selector}._domainkey.{domain.rstrip('.')}."
    chunks = [record[i:i + TXT_STRING_MAX] for i in range(0, len(record), TXT_STRING_MAX)] or [""]
    # Zone-file escaping happens after the cut: the 255 limit counts the stored octets.
    strings = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"{name} IN TXT ( {strings} )"


def _check_name(what: str, value: str) -> str:
    if not value.isascii() or not _LABELS_RE.fullmatch(value):
        raise SigningError(f"DKIM {what} must be ASCII DNS labels (IDNA-encode first), not {value!r}")
    return value


def _load_key(data: bytes) -> _Key:
    """Parse a private key once; every error names the problem, never the key's content.

    `from None` throughout: the parsers' own exceptions are dropped so a logged traceback
    cannot carry fragments of the key either.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise SigningError("DKIM private key must be bytes")
    data = bytes(data).strip()
    if not data:
        raise SigningError("DKIM private key is empty")
    if data.startswith(b"-----BEGIN "):
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise SigningError("DKIM private key is encrypted; store it unencrypted, "
                               "readable by the gateway user only") from None
        except (ValueError, UnsupportedAlgorithm):
            raise SigningError("DKIM private key is not a valid PEM private key") from None
    else:
        # dknewkey's Ed25519 form: base64 of the 32-byte seed, no PEM armour.
        try:
            seed = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            seed = b""
        if len(seed) != 32:
            raise SigningError("DKIM private key is neither PEM nor a base64 Ed25519 seed")
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return _from_private_key(private)


# The one place this module reaches into dkimpy, checked against the versions below (read
# dkim.DomainSigner.gen_header and dkim.crypto.RSASSA_PKCS1_v1_5_sign again before adding one;
# pyproject.toml keeps dkimpy below 1.2, tests/test_signing_dkimpy.py fails on any other).
#
# dkimpy computes the RSA signature in pure Python (two 1024-bit pow()s, ~6 ms per message,
# holding the GIL, which stalls the SMTP and HTTP servers of the same process), and its public
# API takes only PEM bytes: there is no way to hand it a signing function. Its signer looks up
# RSASSA_PKCS1_v1_5_sign(hash, private_key) in the dkim module when it signs, so for the length
# of one of our own sign() calls, and only then, that name points to the same PKCS#1 v1.5
# signature (deterministic: byte for byte equal, tested) computed by OpenSSL through
# `cryptography` in ~0.2 ms. A lock makes the swap and the restore one step per call, so
# concurrent signers cannot leave it behind; dkimpy's own function comes back afterwards, and
# anything else that signs through dkimpy meanwhile (another key, another hash) is passed to it.
DKIMPY_CHECKED = ("1.1.8",)
_DKIMPY_SWAP = threading.Lock()


@contextmanager
def _rsa_step_in_openssl(key: rsa.RSAPrivateKey | None) -> Iterator[None]:
    """Inside the block, dkimpy's RSA step for `key` runs in OpenSSL; nothing for Ed25519."""
    if key is None:  # Ed25519: dkimpy already signs through libsodium
        yield
        return
    openssl_key, modulus = key, key.public_key().public_numbers().n
    with _DKIMPY_SWAP:
        dkimpys_own = dkim.RSASSA_PKCS1_v1_5_sign

        def openssl_sign(digest: Any, private_key: dict[str, int]) -> bytes:
            if private_key.get("modulus") != modulus or getattr(digest, "name", "") != "sha256":
                return dkimpys_own(digest, private_key)
            return openssl_key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

        dkim.RSASSA_PKCS1_v1_5_sign = openssl_sign
        try:
            yield
        finally:
            dkim.RSASSA_PKCS1_v1_5_sign = dkimpys_own


def _from_private_key(private: object) -> _Key:
    if isinstance(private, rsa.RSAPrivateKey):
        if not RSA_MIN_BITS <= private.key_size <= RSA_MAX_BITS:
            raise SigningError(f"DKIM RSA key has {private.key_size} bits; "
                               f"{RSA_MIN_BITS}–{RSA_MAX_BITS} are usable (RFC 8301), 2048 recommended")
        pkcs1 = private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())
        try:
            dkim.crypto.parse_pem_private_key(pkcs1)  # what sign() will do; fail now, not per message
        except dkim.crypto.UnparsableKeyError:
            raise SigningError("dkimpy cannot parse this RSA key") from None
        spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return _Key(_RSA, pkcs1, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}", private)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        try:
            import nacl.signing  # noqa: F401  without it dkimpy imports fine and fails on every sign()
        except ImportError:
            raise SigningError("Ed25519 DKIM keys need PyNaCl installed") from None
        seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        raw_public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
        # RFC 8463 §4.2: p= is the bare 32-byte public key, not a SubjectPublicKeyInfo.
        return _Key(_ED25519, base64.b64encode(seed),
                    f"v=DKIM1; k=ed25519; p={base64.b64encode(raw_public).decode()}")
    raise SigningError(f"DKIM keys must be RSA or Ed25519, not {type(private).__name__.lstrip('_')}")
