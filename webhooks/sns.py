"""Amazon SNS message verification, for SES inbound mail delivered to an HTTPS subscription.

SES hands us received mail through a receipt rule "SNS" action: SES publishes a notification to
a topic and SNS POSTs it to our HTTPS endpoint. The POST carries no shared secret, so anybody
can send us a JSON body that looks like SNS. What makes a message trustworthy is the RSA
signature SNS puts on it, checked with the certificate at `SigningCertURL` -- and that URL is
part of the message, chosen by whoever sent it. The whole scheme is therefore only as strong as
our refusal to fetch a certificate from anywhere but SNS itself: every URL is checked against an
allow-listed host pattern *before* any request is made, redirects are never followed, and the
response size and time are bounded.

A valid signature proves only that *some* SNS topic sent the message; anyone with an AWS account
can subscribe our endpoint to their own topic. The caller must compare `TopicArn` with the topics
it expects before acting on a message (webhooks/ses.py does, against its settings), and should
deduplicate on `MessageId`: SNS redelivers with the same id, and a captured message stays
replayable until it is older than `max_age`.

AWS documentation followed (the SNS and SES developer guides):
- "Verifying the signatures of Amazon SNS messages" and its procedure page
  https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
  https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message-verify-message-signature.html
  The string to sign is "Name\\nValue\\n" for each signed field in byte-sort order: for a
  Notification Message, MessageId, Subject (only if present), Timestamp, TopicArn, Type; for
  SubscriptionConfirmation and UnsubscribeConfirmation Message, MessageId, SubscribeURL,
  Timestamp, Token, TopicArn, Type. SignatureVersion 1 is SHA1withRSA, 2 is SHA256withRSA.
  Escaped control characters in the JSON are compared in their original (decoded) form, which
  is what `json.loads` gives us.
- "Parsing message formats" (HTTP/HTTPS headers and the three JSON bodies) and
  "HTTP/HTTPS subscription confirmation JSON format"
  https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html
  https://docs.aws.amazon.com/sns/latest/dg/http-subscription-confirmation-json.html
- SES "Publish to Amazon SNS topic action" (mail up to 150 KB; encoding UTF-8 or Base64, and only
  Base64 keeps 8-bit mail byte-exact)
  https://docs.aws.amazon.com/ses/latest/dg/receiving-email-action-sns.html
- SES "Contents of notifications for Amazon SES email receiving" and its examples: the SNS
  `Message` is the JSON of a notification with notificationType "Received", `mail`, `receipt`
  (whose `action` names the topic and encoding) and `content`, the raw message
  https://docs.aws.amazon.com/ses/latest/dg/receiving-email-notifications-contents.html
  https://docs.aws.amazon.com/ses/latest/dg/receiving-email-notifications-examples.html

We trust the certificate because it came over verified HTTPS from an AWS host, which is what
AWS's own SDK validators do; the certificate itself must be a currently valid X.509 certificate
with an RSA key of at least 2048 bits.
"""
from __future__ import annotations

import base64
import binascii
import re
import ssl
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "DEFAULT_CERT_HOST_PATTERN",
    "SnsError",
    "SnsUnavailable",
    "SnsVerifier",
    "canonical_string",
    "check_aws_url",
]


class SnsError(ValueError):
    """Verification failed; `str(exc)` is a short reason safe to log and to return (no secrets, no payload)."""


class SnsUnavailable(SnsError):
    """We could not check the message *now* (AWS unreachable, timed out, answered 5xx).

    Kept apart from a refusal because SNS retries only when we answer 5xx: a network blip while
    fetching the certificate must not make SNS drop a real mail.
    """


# Every SNS endpoint is sns.<region>.amazonaws.com, or .amazonaws.com.cn in the China regions
# (cn-north-1, cn-northwest-1), and a region is shaped <area>[-gov]-<direction>-<n>: us-east-1,
# eu-central-1, ap-southeast-5, us-gov-west-1. The label is pinned to that shape because a looser
# "[a-z0-9-]+" also matched hosts that are not SNS and that anybody can serve files from:
# sns.s3.amazonaws.com is the S3 bucket "sns" (path-style hosts like s3, s3-external-1, or
# s3-website-* never look like a region). The pattern is matched against the URL's host, and its
# ":port" when one is given, so this default refuses any explicit port but 443.
DEFAULT_CERT_HOST_PATTERN = (r"^sns\.(?:(?!cn-)[a-z]{2}(?:-gov)?-[a-z]+-[0-9]{1,2}\.amazonaws\.com"
                             r"|cn-[a-z]+-[0-9]{1,2}\.amazonaws\.com\.cn)$")
# AWS names every signing certificate /SimpleNotificationService-<hex>.pem at the root of the SNS
# host; the raw (still percent-encoded) path must be exactly that, so no encoding, dot segment,
# extra slash or parameter can point the fetch at something else.
_CERT_PATH = re.compile(rb"/SimpleNotificationService-[0-9a-f]{1,64}\.pem")
# A SubscribeURL is the SNS API's root with a query (Action=ConfirmSubscription&TopicArn&Token).
_API_PATH = b"/"
NEGATIVE_CACHE_SIZE = 256     # certificate URLs that failed, remembered so a forgery can't make us refetch
NEGATIVE_TTL = 600.0          # seconds a refused certificate URL is answered from memory
NEGATIVE_TTL_UNAVAILABLE = 30.0   # seconds an unreachable one is: SNS retries, and AWS comes back

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"

# Listed in byte-sort order, as the string to sign requires.
_SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    UNSUBSCRIBE_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
# SNS omits Subject when the publisher gave none; it is then not part of the string to sign.
_OPTIONAL_FIELDS = frozenset({"Subject"})

_HASH_FOR_VERSION: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

MAX_FUTURE_SKEW = 300.0       # seconds a Timestamp may lie ahead of our clock
CERT_CACHE_SIZE = 32          # AWS uses one certificate per region at a time; 32 leaves room for rotation
MIN_RSA_BITS = 2048
_MAX_URL_CHARS = 2048
_MAX_SIGNATURE_CHARS = 1024   # base64 of a 4096-bit RSA signature is 684 characters
_MAX_TIMESTAMP_CHARS = 64
# Whitespace, control characters and backslashes are never in an AWS URL, and are where URL
# parsers disagree with each other; refusing them leaves no room for a parser differential.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\]")


def canonical_string(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed: "Key\\nValue\\n" for each signed field of the message's Type.

    Raises SnsError for an unknown Type or a signed field that is missing or not a string, so a
    message we cannot canonicalise exactly is never half-checked.
    """
    kind = message.get("Type")
    fields = _SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise SnsError("unsupported message Type")
    parts: list[str] = []
    for key in fields:
        value = message.get(key)
        if value is None and key in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise SnsError(f"{key} missing or not a string")
        parts.append(f"{key}\n{value}\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape: SNS never signs that
        raise SnsError("message holds text that is not valid Unicode") from None


def check_aws_url(url: str, host_pattern: str, *, pem: bool = False) -> None:
    """Refuse (SnsError) any URL we must not fetch: it has to be https, without credentials, on a
    host that fully matches `host_pattern` (case-insensitive; "host:port" when the URL names a
    port other than 443); with `pem=True` (SigningCertURL) its raw path must be
    /SimpleNotificationService-<hex>.pem, with no query or fragment, and otherwise (SubscribeURL)
    the path must be "/".

    The URL is parsed by httpx, the same parser that will make the request, so what we check is
    what we fetch. The host is compared in its ASCII (IDNA) form so that Unicode look-alikes and
    case-folding quirks (Kelvin sign, long s) cannot satisfy a pattern written for ASCII.
    """
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS or _UNSAFE_URL_CHARS.search(url):
        raise SnsError("URL is malformed")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError):
        raise SnsError("URL is malformed") from None
    if parsed.scheme != "https":
        raise SnsError("URL is not https")
    if parsed.userinfo:
        raise SnsError("URL carries credentials")
    # httpx drops a default port (":443") and keeps any other: the pattern sees "host:port" then.
    authority = host if parsed.port is None else f"{host}:{parsed.port}"
    if not host or re.fullmatch(host_pattern, authority, re.IGNORECASE | re.ASCII) is None:
        raise SnsError("URL host is not an allowed AWS host")
    path = parsed.raw_path.partition(b"?")[0]
    # httpx resolves dot segments before we see the path; AWS never writes them.
    if "/." in url.partition("?")[0]:
        raise SnsError("URL is not in the form AWS writes")
    if pem and _CERT_PATH.fullmatch(path) is None:
        raise SnsError("certificate URL does not name a .pem file of SNS (/SimpleNotificationService-<hex>.pem)")
    if pem and ("?" in url or "#" in url):   # AWS certificate URLs never carry either, not even empty
        raise SnsError("certificate URL has a query or fragment")
    if not pem and (path != _API_PATH or parsed.fragment):
        raise SnsError("URL is not the SNS API root")


@dataclass(frozen=True)
class _Certificate:
    public_key: rsa.RSAPublicKey
    not_before: float
    not_after: float

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after


class SnsVerifier:
    """Checks SNS messages against certificates fetched only from allow-listed AWS hosts.

    Synchronous by design (certificate fetches block); async callers run it in a thread. One
    instance is meant to live as long as the process so its certificate cache does its job:
    normal traffic fetches each signing certificate once.
    """

    def __init__(self, *, cert_host_pattern: str = DEFAULT_CERT_HOST_PATTERN, ca_file: str | None = None,
                 timeout: float = 5.0, max_cert_bytes: int = 64 * 1024, max_age: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        """`max_age` must exceed the subscription's delivery-retry window: SNS keeps a message's
        original Timestamp when it redelivers. `ca_file` replaces the system CAs (for tests or a
        TLS-inspecting proxy); `clock` is injectable so the replay guard can be tested."""
        re.compile(cert_host_pattern)  # a broken pattern fails here, at startup, not per message
        if timeout <= 0 or max_cert_bytes <= 0 or max_age <= 0:
            raise ValueError("timeout, max_cert_bytes and max_age must be positive")
        self.cert_host_pattern = cert_host_pattern
        self.timeout = timeout
        self.max_cert_bytes = max_cert_bytes
        self.max_age = max_age
        self._clock = clock
        # Built once: loading the system CA store costs milliseconds, and an SSLContext may be
        # shared between threads. With a cafile only that file is trusted, not the system store.
        self._ssl_context = ssl.create_default_context(cafile=ca_file)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, _Certificate] = OrderedDict()
        # URL -> (until, the refusal): a forged message naming a URL that failed is answered
        # from here, so repeating it never makes us fetch again (bounded, oldest dropped first).
        self._failed: OrderedDict[str, tuple[float, SnsError]] = OrderedDict()
        self._in_flight: dict[str, threading.Lock] = {}

    # -- public API ---------------------------------------------------------------------------

    def verify(self, message: Mapping[str, Any]) -> None:
        """Return if `message` (the parsed JSON body of an SNS POST) is authentic; raise SnsError
        (SnsUnavailable when AWS could not be asked) otherwise.

        Every check that needs no network runs first, so a malformed, misdirected (certificate
        URL off the allow-list) or stale message never causes an outbound request; a well-formed
        forgery costs at most one certificate fetch, and none once the certificate is cached.
        """
        if not isinstance(message, Mapping):
            raise SnsError("message is not a JSON object")
        signed = canonical_string(message)
        version = message.get("SignatureVersion")
        if not isinstance(version, str) or version not in _HASH_FOR_VERSION:
            raise SnsError("unsupported SignatureVersion")
        cert_url = message.get("SigningCertURL")
        if not isinstance(cert_url, str):
            raise SnsError("SigningCertURL missing or not a string")
        check_aws_url(cert_url, self.cert_host_pattern, pem=True)
        self._check_timestamp(message["Timestamp"], self._clock())
        signature = _decode_signature(message.get("Signature"))
        public_key = self._public_key(cert_url)
        try:
            public_key.verify(signature, signed, padding.PKCS1v15(), _HASH_FOR_VERSION[version]())
        except InvalidSignature:
            raise SnsError("signature does not match") from None

    def confirm_subscription(self, message: Mapping[str, Any]) -> None:
        """Visit the SubscribeURL of a SubscriptionConfirmation that `verify` has accepted.

        Does not verify again: call `verify` first. The URL must pass the same host check as the
        certificate URL and be a ConfirmSubscription call, so a message can never make us fetch
        an arbitrary URL. Raises SnsError on a refusal or a non-2xx answer (SnsUnavailable when
        AWS could not be reached or answered 5xx, which is worth retrying).
        """
        if message.get("Type") != SUBSCRIPTION_CONFIRMATION:
            raise SnsError("not a SubscriptionConfirmation")
        url = message.get("SubscribeURL")
        if not isinstance(url, str):
            raise SnsError("SubscribeURL missing or not a string")
        check_aws_url(url, self.cert_host_pattern)
        if httpx.URL(url).params.get("Action") != "ConfirmSubscription":
            raise SnsError("SubscribeURL is not a ConfirmSubscription call")
        # The SubscribeURL holds the subscription token: it never goes into a reason.
        with _transport_errors("ConfirmSubscription"), self._client() as client, \
                client.stream("GET", url) as response:
            status = response.status_code
        if status >= 500:
            raise SnsUnavailable(f"ConfirmSubscription answered HTTP {status}")
        if not 200 <= status < 300:
            raise SnsError(f"ConfirmSubscription answered HTTP {status}")

    # -- checks -------------------------------------------------------------------------------

    def _check_timestamp(self, value: str, now: float) -> None:
        """The replay guard: a captured message is refused once it is older than `max_age`."""
        sent = _parse_timestamp(value)
        if now - sent > self.max_age:
            raise SnsError("message Timestamp is too old")
        if sent - now > MAX_FUTURE_SKEW:
            raise SnsError("message Timestamp is in the future")

    # -- certificates -------------------------------------------------------------------------

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        """The certificate's key, from the cache while the certificate is valid.

        Concurrent first uses of one URL wait for a single fetch instead of each fetching
        (single flight); different URLs do not wait for each other. A URL whose fetch failed is
        refused from memory for a while (NEGATIVE_TTL; NEGATIVE_TTL_UNAVAILABLE when AWS could
        not be reached), the same refusal as the first time.
        """
        with self._lock:
            cached = self._cached(url)
            if cached is not None:
                return cached.public_key
            self._raise_if_failed(url)
            flight = self._in_flight.setdefault(url, threading.Lock())
        with flight:
            with self._lock:
                cached = self._cached(url)
                if cached is None:
                    self._raise_if_failed(url)
            if cached is not None:
                return cached.public_key
            try:
                try:
                    cert = self._fetch_certificate(url)
                    if not cert.valid_at(self._clock()):
                        raise SnsError("signing certificate is not currently valid")
                except SnsError as exc:
                    self._remember_failure(url, exc)
                    raise
                with self._lock:
                    self._cache[url] = cert
                    while len(self._cache) > CERT_CACHE_SIZE:
                        self._cache.popitem(last=False)
            finally:
                with self._lock:
                    if self._in_flight.get(url) is flight:
                        del self._in_flight[url]
            return cert.public_key

    def _raise_if_failed(self, url: str) -> None:
        """Refuse again, without a request, a URL that failed recently (caller holds the lock)."""
        failed = self._failed.get(url)
        if failed is None:
            return
        until, refusal = failed
        if self._clock() < until:
            raise type(refusal)(str(refusal))
        del self._failed[url]

    def _remember_failure(self, url: str, refusal: SnsError) -> None:
        ttl = NEGATIVE_TTL_UNAVAILABLE if isinstance(refusal, SnsUnavailable) else NEGATIVE_TTL
        with self._lock:
            self._failed[url] = (self._clock() + ttl, refusal)
            self._failed.move_to_end(url)
            while len(self._failed) > NEGATIVE_CACHE_SIZE:
                self._failed.popitem(last=False)

    def _cached(self, url: str) -> _Certificate | None:
        """A cached certificate still valid now (caller holds the lock); expired ones are dropped
        so the next use fetches the certificate AWS serves today."""
        cert = self._cache.get(url)
        if cert is None:
            return None
        if not cert.valid_at(self._clock()):
            del self._cache[url]
            return None
        self._cache.move_to_end(url)
        return cert

    def _fetch_certificate(self, url: str) -> _Certificate:
        data = self._get_bounded(url)
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise SnsError("SigningCertURL did not serve a PEM X.509 certificate") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            raise SnsError("signing certificate does not hold an RSA key of 2048 bits or more")
        return _Certificate(key, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())

    def _get_bounded(self, url: str) -> bytes:
        """GET the certificate: no redirects, no compression, at most `max_cert_bytes`, within
        `timeout` overall (httpx's timeout is per read, which a slow drip would stretch)."""
        deadline = time.monotonic() + self.timeout
        with _transport_errors("certificate fetch"), self._client() as client, \
                client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            status = response.status_code
            if 300 <= status < 400:
                raise SnsError("certificate URL answered with a redirect (not followed)")
            if status >= 500 or status == 429:
                raise SnsUnavailable(f"certificate fetch answered HTTP {status}")
            if status != 200:
                raise SnsError(f"certificate fetch answered HTTP {status}")
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise SnsError("certificate response is compressed")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_cert_bytes:
                raise SnsError("certificate response is too large")
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if len(body) > self.max_cert_bytes:
                    raise SnsError("certificate response is too large")
                if time.monotonic() > deadline:
                    raise SnsUnavailable("certificate fetch timed out")
            return bytes(body)

    def _client(self) -> httpx.Client:
        """A client per request: fetches are rare (cached), and nothing stays open between them.
        trust_env=False keeps proxy and CA environment variables from redirecting the fetch."""
        return httpx.Client(verify=self._ssl_context, follow_redirects=False, timeout=self.timeout,
                            trust_env=False, headers={"User-Agent": "studio-mail-gateway SNS verifier"})


@contextmanager
def _transport_errors(what: str) -> Iterator[None]:
    """httpx's transport failures become SnsUnavailable (worth a retry) with a reason naming no URL."""
    try:
        yield
    except SnsError:
        raise
    except httpx.TimeoutException:
        raise SnsUnavailable(f"{what} timed out") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:  # OSError covers ssl.SSLError
        raise SnsUnavailable(f"{what} failed ({type(exc).__name__})") from None


def _parse_timestamp(value: str) -> float:
    """SNS writes ISO 8601 in UTC with milliseconds and "Z"; a time without a zone is refused
    rather than guessed."""
    if len(value) > _MAX_TIMESTAMP_CHARS:
        raise SnsError("Timestamp is not ISO 8601")
    try:
        sent = datetime.fromisoformat(value)
    except ValueError:
        raise SnsError("Timestamp is not ISO 8601") from None
    if sent.tzinfo is None:
        raise SnsError("Timestamp has no time zone")
    return sent.timestamp()


def _decode_signature(value: Any) -> bytes:
    if not isinstance(value, str) or not value or len(value) > _MAX_SIGNATURE_CHARS:
        raise SnsError("Signature missing or malformed")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SnsError("Signature is not base64") from None
