"""SNS signature verification against an emulated SNS over real HTTPS (tests/sns_emulator.py).

Nothing in webhooks/sns.py is mocked: certificates are fetched over TLS from the emulator, and
every refusal that must happen before any network use is proven by the emulator's request log.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest

from tests.sns_emulator import Response, SnsEmulator, iso_timestamp, make_signing_key, post_headers
from webhooks.sns import (
    DEFAULT_CERT_HOST_PATTERN,
    SnsError,
    SnsUnavailable,
    SnsVerifier,
    canonical_string,
    check_aws_url,
)

TOPIC = "arn:aws:sns:eu-west-1:123456789012:studio-inbound"
RAW = (b"Return-Path: <guest@example.org>\r\n"
       b"From: =?utf-8?q?Ren=C3=A9e?= <guest@example.org>\r\n"
       b"To: Studio North <hello@north.mail.test>, other@example.net\r\n"
       b"Cc: desk@north.mail.test\r\n"
       b"Subject: Booking for Saturday\r\n"
       b"Date: Fri, 11 Sep 2015 20:32:32 +0000\r\n"
       b"Message-ID: <booking-1@example.org>\r\n"
       b"Received: from mx.example.org\r\n\tby inbound-smtp.eu-west-1.amazonaws.com\r\n"
       b"MIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
       b"Content-Transfer-Encoding: 8bit\r\n"
       b"\r\n"
       b"Caf\xe9 at ten?\r\n")


@pytest.fixture
def emu() -> Iterator[SnsEmulator]:
    with SnsEmulator() as emulator:
        yield emulator


@pytest.fixture
def verifier(emu: SnsEmulator) -> SnsVerifier:
    return SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file)


def refused(verifier: SnsVerifier, message: dict[str, Any], reason: str) -> None:
    with pytest.raises(SnsError) as caught:
        verifier.verify(message)
    assert reason in str(caught.value)


# -- valid messages --------------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("subject", [None, "Amazon SES Email Receipt Notification"])
def test_valid_notification_verifies(emu: SnsEmulator, verifier: SnsVerifier, version: int,
                                     subject: str | None) -> None:
    message = emu.sign(emu.notification("Hello world!\nSecond line", TOPIC, subject=subject), version)
    assert message["SignatureVersion"] == str(version)
    assert ("Subject" in message) is (subject is not None)
    verifier.verify(message)
    verifier.verify(json.loads(json.dumps(message)))   # as it arrives: parsed from the POST body


@pytest.mark.parametrize("version", [1, 2])
def test_valid_subscription_confirmation_verifies(emu: SnsEmulator, verifier: SnsVerifier, version: int) -> None:
    verifier.verify(emu.sign(emu.subscription_confirmation(TOPIC), version))


def test_unsubscribe_confirmation_verifies(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    message = emu.subscription_confirmation(TOPIC)
    message.update(Type="UnsubscribeConfirmation",
                   Message=f"You have chosen to deactivate subscription {TOPIC}:1.\n"
                           "To cancel this operation and restore the subscription, visit the SubscribeURL "
                           "included in this message.")
    verifier.verify(emu.sign(message))


# -- tampering and forgery -------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("Message", "Hello world?"),
    ("Subject", "Another subject"),
    ("TopicArn", "arn:aws:sns:eu-west-1:999999999999:attacker"),
    ("MessageId", "00000000-0000-0000-0000-000000000000"),
])
@pytest.mark.parametrize("version", [1, 2])
def test_tampered_field_fails(emu: SnsEmulator, verifier: SnsVerifier, field: str, value: str,
                              version: int) -> None:
    message = emu.sign(emu.notification("Hello world!", TOPIC, subject="Subject"), version)
    verifier.verify(message)
    refused(verifier, {**message, field: value}, "signature does not match")


def test_added_or_removed_subject_fails(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    without = emu.sign(emu.notification("Hello", TOPIC))
    refused(verifier, {**without, "Subject": "added"}, "signature does not match")
    with_subject = emu.sign(emu.notification("Hello", TOPIC, subject="present"))
    refused(verifier, {k: v for k, v in with_subject.items() if k != "Subject"}, "signature does not match")


def test_signature_from_another_key_fails_for_the_original_certificate(emu: SnsEmulator,
                                                                       verifier: SnsVerifier) -> None:
    with SnsEmulator(signing_key=make_signing_key()) as other:
        forged = other.sign(other.notification("Hello world!", TOPIC))
        verifier.verify(forged)   # a genuine signature, from its own (allowed) certificate URL
        refused(verifier, {**forged, "SigningCertURL": emu.cert_url}, "signature does not match")
        assert other.fetches(other.cert_path) == 1
    assert emu.fetches(emu.cert_path) == 1


def test_malformed_signature_refused_without_request(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    refused(verifier, {**message, "Signature": "not base64!"}, "Signature is not base64")
    refused(verifier, {**message, "Signature": ""}, "Signature missing")
    refused(verifier, {k: v for k, v in message.items() if k != "Signature"}, "Signature missing")
    assert emu.requests == []


@pytest.mark.parametrize("change, reason", [
    ({"Type": "Publish"}, "unsupported message Type"),
    ({"Type": None}, "unsupported message Type"),
    ({"MessageId": None}, "MessageId missing"),
    ({"TopicArn": 42}, "TopicArn missing"),
    ({"Subject": ["list"]}, "Subject missing or not a string"),
    ({"SigningCertURL": None}, "SigningCertURL missing"),
])
def test_malformed_message_refused_without_request(emu: SnsEmulator, verifier: SnsVerifier,
                                                   change: dict[str, Any], reason: str) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    refused(verifier, {**message, **change}, reason)
    assert emu.requests == []


# -- the certificate URL is never trusted ----------------------------------------------------

@pytest.mark.parametrize("cert_url, reason", [
    (lambda e: e.cert_url.replace("https://", "http://"), "not https"),
    (lambda e: e.cert_url.replace("https://", "https://user@"), "credentials"),
    (lambda e: e.cert_url.replace("https://", "https://user:pw@"), "credentials"),
    (lambda e: e.cert_url.replace(".pem", ".txt"), "does not name a .pem file"),
    (lambda e: e.cert_url.replace(".pem", ".txt?.pem"), "does not name a .pem file"),
    (lambda e: e.cert_url + "?x=1", "query or fragment"),
    (lambda e: e.cert_url + "#x", "query or fragment"),
    (lambda e: e.cert_url.replace("localhost", "127.0.0.1"), "not an allowed AWS host"),
    (lambda e: e.cert_url.replace("localhost", "localhost.evil.example"), "not an allowed AWS host"),
    (lambda e: e.cert_url.replace("https://localhost", "https://evil.example\\@localhost"), "malformed"),
    (lambda e: e.cert_url.replace("https://", "https:// "), "malformed"),
])
def test_cert_url_refused_without_any_request(emu: SnsEmulator, verifier: SnsVerifier,
                                              cert_url: Callable[[SnsEmulator], str], reason: str) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    refused(verifier, {**message, "SigningCertURL": cert_url(emu)}, reason)
    assert emu.requests == []


@pytest.mark.parametrize("cert_url", [
    "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-0.pem",
    "https://sns.eu-west-1.amazonaws.com@evil.example/SimpleNotificationService-0.pem",
    "https://evil.example/sns.eu-west-1.amazonaws.com/SimpleNotificationService-0.pem",
    "https://evilsns.eu-west-1.amazonaws.com/SimpleNotificationService-0.pem",
    "https://sns.eu-west-1.evil.com/SimpleNotificationService-0.pem",
    "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0.pem",
    "https://s3.eu-west-1.amazonaws.com/bucket/SimpleNotificationService-0.pem",
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0.pem.html",
    "https://sns.eu-west-1.amazonaws.com\\.evil.example/SimpleNotificationService-0.pem",
    "https://\u017fns.eu-west-1.amazonaws.com/SimpleNotificationService-0.pem",   # long s folds to "s"
    "https://\u0455ns.eu-west-1.amazonaws.com/SimpleNotificationService-0.pem",   # Cyrillic dze
    "file:///etc/ssl/certs/SimpleNotificationService-0.pem",
])
def test_default_pattern_refuses_lookalike_hosts_without_any_request(emu: SnsEmulator, cert_url: str) -> None:
    verifier = SnsVerifier(ca_file=emu.ca_file)   # the production host pattern
    message = emu.sign(emu.notification("Hello", TOPIC))
    with pytest.raises(SnsError):
        verifier.verify({**message, "SigningCertURL": cert_url})
    assert emu.requests == []


@pytest.mark.parametrize("url", [
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3250158c6506d40628c9c8fd8ab1b6a1.pem",
    "HTTPS://SNS.EU-WEST-1.AMAZONAWS.COM/SimpleNotificationService-0.pem",
])
def test_default_pattern_accepts_aws_certificate_urls(url: str) -> None:
    check_aws_url(url, DEFAULT_CERT_HOST_PATTERN, pem=True)


def test_check_aws_url_needs_pem_only_for_certificates() -> None:
    url = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:x&Token=ab"
    check_aws_url(url, DEFAULT_CERT_HOST_PATTERN)
    with pytest.raises(SnsError, match=r"\.pem"):
        check_aws_url(url, DEFAULT_CERT_HOST_PATTERN, pem=True)


# -- signature versions and the replay guard ------------------------------------------------

@pytest.mark.parametrize("version", ["3", "0", "", "SHA256", 1, 2, None])
def test_unsupported_signature_version_refused_without_request(emu: SnsEmulator, verifier: SnsVerifier,
                                                               version: Any) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC), 2)
    refused(verifier, {**message, "SignatureVersion": version}, "unsupported SignatureVersion")
    assert emu.requests == []


def test_stale_timestamp_refused_without_request(emu: SnsEmulator) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    late = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, clock=lambda: time.time() + 3601)
    refused(late, message, "too old")
    short = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, max_age=60,
                        clock=lambda: time.time() + 61)
    refused(short, message, "too old")
    assert emu.requests == []
    SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, max_age=60,
                clock=lambda: time.time() + 50).verify(message)


def test_future_timestamp_refused_without_request(emu: SnsEmulator) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    early = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, clock=lambda: time.time() - 301)
    refused(early, message, "in the future")
    assert emu.requests == []


@pytest.mark.parametrize("stamp, reason", [
    ("yesterday", "not ISO 8601"),
    ("2030-01-01T00:00:00.000", "no time zone"),
    ("", "not ISO 8601"),
])
def test_malformed_timestamp_refused(emu: SnsEmulator, verifier: SnsVerifier, stamp: str, reason: str) -> None:
    message = emu.notification("Hello", TOPIC)
    message["Timestamp"] = stamp
    refused(verifier, emu.sign(message), reason)
    assert emu.requests == []


def test_timestamp_offset_notation_accepted(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    message = emu.notification("Hello", TOPIC)
    message["Timestamp"] = datetime.now(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    verifier.verify(emu.sign(message))


# -- certificate fetching --------------------------------------------------------------------

def test_certificate_fetched_once_for_many_messages(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    for index in range(25):
        verifier.verify(emu.sign(emu.notification(f"message {index}", TOPIC), 1 + index % 2))
    assert emu.fetches(emu.cert_path) == 1
    assert emu.requests == [("GET", emu.cert_path)]


def test_concurrent_first_use_fetches_once(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    messages = [emu.sign(emu.notification(f"message {i}", TOPIC)) for i in range(8)]
    start = threading.Barrier(len(messages))

    def check(message: dict[str, Any]) -> None:
        start.wait(timeout=5)   # all eight reach the empty cache together
        verifier.verify(message)

    with ThreadPoolExecutor(max_workers=len(messages)) as pool:
        for future in [pool.submit(check, m) for m in messages]:
            future.result()
    assert emu.fetches(emu.cert_path) == 1


def test_each_verifier_and_url_has_its_own_cache_entry(emu: SnsEmulator) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    for _ in range(2):
        SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file).verify(message)
    assert emu.fetches(emu.cert_path) == 2


def test_expired_certificate_is_fetched_again_and_refused() -> None:
    now = time.time()
    key = make_signing_key(valid_until=datetime.now(timezone.utc) + timedelta(hours=1))
    with SnsEmulator(signing_key=key) as emu:
        clock = [now]
        verifier = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, max_age=10 * 3600,
                               clock=lambda: clock[0])
        verifier.verify(emu.sign(emu.notification("Hello", TOPIC)))
        clock[0] = now + 2 * 3600   # the cached certificate has expired since
        refused(verifier, emu.sign(emu.notification("Hello again", TOPIC)), "not currently valid")
        assert emu.fetches(emu.cert_path) == 2


def test_certificate_not_yet_valid_refused() -> None:
    key = make_signing_key(valid_from=datetime.now(timezone.utc) + timedelta(days=1))
    with SnsEmulator(signing_key=key) as emu:
        verifier = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file)
        refused(verifier, emu.sign(emu.notification("Hello", TOPIC)), "not currently valid")


def test_redirect_from_certificate_url_not_followed(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    path = "/SimpleNotificationService-5e1ec7ed.pem"
    emu.serve(path, Response(302, b"", {"Location": emu.cert_url}))
    message = emu.sign(emu.notification("Hello", TOPIC))
    refused(verifier, {**message, "SigningCertURL": emu.base_url + path}, "redirect")
    assert emu.requests == [("GET", path)]
    assert emu.fetches(emu.cert_path) == 0


@pytest.mark.parametrize("content_length", [True, False])
def test_oversized_certificate_response_refused(emu: SnsEmulator, verifier: SnsVerifier,
                                                content_length: bool) -> None:
    path = "/SimpleNotificationService-b16b16.pem"
    pem = emu.signing_key.cert_pem
    emu.serve(path, Response(200, pem + b"\n" * (64 * 1024), content_length=content_length))
    message = emu.sign(emu.notification("Hello", TOPIC))
    refused(verifier, {**message, "SigningCertURL": emu.base_url + path}, "too large")
    bigger = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, max_cert_bytes=128 * 1024)
    bigger.verify({**message, "SigningCertURL": emu.base_url + path})   # the same body, within its limit


def test_declared_oversized_length_refused_before_reading(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    # The body is short, so only the declared length can trigger the refusal: reading first
    # would instead end in a truncated-body error.
    url = emu.serve("/SimpleNotificationService-dec1a7ed.pem",
                    Response(200, emu.signing_key.cert_pem, {"Content-Length": str(10**8)}, content_length=False))
    message = emu.sign(emu.notification("Hello", TOPIC))
    with pytest.raises(SnsError, match="too large") as caught:
        verifier.verify({**message, "SigningCertURL": url})
    assert not isinstance(caught.value, SnsUnavailable)


@pytest.mark.parametrize("response, reason, error", [
    (Response(200, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"),
     "PEM X.509", SnsError),
    (Response(200, b"<html>hello</html>"), "PEM X.509", SnsError),
    (Response(404, b"Not Found"), "HTTP 404", SnsError),
    (Response(503, b"busy"), "HTTP 503", SnsUnavailable),
    (Response(200, b"x", {"Content-Encoding": "gzip"}), "compressed", SnsError),
])
def test_bad_certificate_responses_refused(emu: SnsEmulator, verifier: SnsVerifier, response: Response,
                                           reason: str, error: type[SnsError]) -> None:
    url = emu.serve("/SimpleNotificationService-badbad.pem", response)
    message = emu.sign(emu.notification("Hello", TOPIC))
    with pytest.raises(error, match=reason):
        verifier.verify({**message, "SigningCertURL": url})


def test_untrusted_tls_certificate_is_unavailable_not_accepted(emu: SnsEmulator) -> None:
    system_cas = SnsVerifier(cert_host_pattern=emu.host_pattern)   # does not trust the test CA
    with pytest.raises(SnsUnavailable, match="certificate fetch failed"):
        system_cas.verify(emu.sign(emu.notification("Hello", TOPIC)))
    assert emu.fetches(emu.cert_path) == 0


def test_unreachable_certificate_host_is_unavailable(emu: SnsEmulator) -> None:
    with SnsEmulator() as gone:
        message = gone.sign(gone.notification("Hello", TOPIC))
    verifier = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, timeout=2)
    with pytest.raises(SnsUnavailable, match="certificate fetch failed"):
        verifier.verify(message)


# -- subscription confirmation ---------------------------------------------------------------

def test_confirm_subscription_visits_subscribe_url(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    message = emu.sign(emu.subscription_confirmation(TOPIC), 2)
    verifier.verify(message)
    verifier.confirm_subscription(message)
    assert emu.confirmations == [(TOPIC, message["Token"])]
    subscribe_target = message["SubscribeURL"][len(emu.base_url):]
    assert emu.requests == [("GET", emu.cert_path), ("GET", subscribe_target)]


@pytest.mark.parametrize("subscribe_url, reason", [
    (lambda e, q: f"https://evil.example/?{q}", "not an allowed AWS host"),
    (lambda e, q: f"https://sns.eu-west-1.amazonaws.com.evil.example/?{q}", "not an allowed AWS host"),
    (lambda e, q: f"http://localhost:{e.port}/?{q}", "not https"),
    (lambda e, q: f"https://user@localhost:{e.port}/?{q}", "credentials"),
    (lambda e, q: f"https://127.0.0.1:{e.port}/?{q}", "not an allowed AWS host"),
    (lambda e, q: f"https://localhost:{e.port}/?Action=Unsubscribe&SubscriptionArn=x", "not a ConfirmSubscription"),
])
def test_confirm_subscription_refuses_disallowed_url_without_request(
        emu: SnsEmulator, verifier: SnsVerifier, subscribe_url: Callable[[SnsEmulator, str], str],
        reason: str) -> None:
    message = emu.subscription_confirmation(TOPIC)
    query = message["SubscribeURL"].split("?", 1)[1]
    message = emu.sign({**message, "SubscribeURL": subscribe_url(emu, query)})
    with pytest.raises(SnsError, match=reason):
        verifier.confirm_subscription(message)
    assert emu.requests == []
    assert emu.confirmations == []


def test_confirm_subscription_non_2xx_raises(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    message = emu.subscription_confirmation(TOPIC)
    message["SubscribeURL"] = message["SubscribeURL"].replace("Token=", "Token=00")   # a token AWS never issued
    with pytest.raises(SnsError, match="HTTP 400") as caught:
        verifier.confirm_subscription(emu.sign(message))
    assert not isinstance(caught.value, SnsUnavailable)
    assert message["Token"] not in str(caught.value)
    assert emu.confirmations == []
    assert len(emu.requests) == 1


def test_confirm_subscription_refuses_other_types(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    with pytest.raises(SnsError, match="not a SubscriptionConfirmation"):
        verifier.confirm_subscription(emu.sign(emu.notification("Hello", TOPIC)))
    assert emu.requests == []


# -- the documented string to sign -----------------------------------------------------------

DOC_NOTIFICATION = {   # the example of "Verifying the signatures of Amazon SNS messages"
    "Type": "Notification",
    "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
    "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
    "Subject": "My subject",
    "Message": "My Test Message",
    "Timestamp": "2012-06-05T04:37:04.321Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLE",
    "SigningCertURL": "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-0.pem",
    "UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
}


def test_canonical_string_of_notification_with_subject() -> None:
    assert canonical_string(DOC_NOTIFICATION) == (
        b"Message\nMy Test Message\n"
        b"MessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n"
        b"Subject\nMy subject\n"
        b"Timestamp\n2012-06-05T04:37:04.321Z\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nNotification\n")


def test_canonical_string_of_notification_without_subject() -> None:
    message = {k: v for k, v in DOC_NOTIFICATION.items() if k != "Subject"}
    expected = (b"Message\nMy Test Message\n"
                b"MessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n"
                b"Timestamp\n2012-06-05T04:37:04.321Z\n"
                b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
                b"Type\nNotification\n")
    assert canonical_string(message) == expected
    assert canonical_string({**message, "Subject": None}) == expected


def test_canonical_string_of_subscription_confirmation() -> None:
    url = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:t&Token=2336"
    message = {"Type": "SubscriptionConfirmation", "MessageId": "3d891288-136d-417f-bc05-901c108273ee",
               "Token": "2336", "TopicArn": "arn:t", "Message": "You have chosen to subscribe.\nVisit it.",
               "SubscribeURL": url, "Timestamp": "2012-06-03T19:25:13.719Z", "Subject": "ignored here"}
    assert canonical_string(message) == (
        b"Message\nYou have chosen to subscribe.\nVisit it.\n"
        b"MessageId\n3d891288-136d-417f-bc05-901c108273ee\n"
        b"SubscribeURL\n" + url.encode() + b"\n"
        b"Timestamp\n2012-06-03T19:25:13.719Z\n"
        b"Token\n2336\n"
        b"TopicArn\narn:t\n"
        b"Type\nSubscriptionConfirmation\n")


# -- the SES payload and headers -------------------------------------------------------------

def test_ses_received_round_trips_raw_bytes(emu: SnsEmulator) -> None:
    notification = json.loads(emu.ses_received(RAW, ["hello@north.mail.test"], TOPIC))
    assert base64.b64decode(notification["content"], validate=True) == RAW
    assert notification["notificationType"] == "Received"
    receipt, mail = notification["receipt"], notification["mail"]
    assert receipt["action"] == {"type": "SNS", "topicArn": TOPIC, "encoding": "BASE64"}
    assert receipt["recipients"] == ["hello@north.mail.test"]
    assert {receipt[k]["status"] for k in ("spamVerdict", "virusVerdict", "spfVerdict", "dkimVerdict",
                                           "dmarcVerdict")} == {"PASS"}
    assert mail["source"] == "guest@example.org"
    assert mail["destination"] == ["hello@north.mail.test", "other@example.net", "desk@north.mail.test"]
    assert mail["headersTruncated"] is False
    assert {"name": "Received", "value": "from mx.example.org by inbound-smtp.eu-west-1.amazonaws.com"} \
        in mail["headers"]
    assert mail["commonHeaders"]["subject"] == "Booking for Saturday"
    assert mail["commonHeaders"]["to"] == ["Studio North <hello@north.mail.test>", "other@example.net"]
    assert mail["commonHeaders"]["messageId"] == "<booking-1@example.org>"


def test_ses_received_utf8_encoding_carries_text(emu: SnsEmulator) -> None:
    raw = RAW.replace(b"Caf\xe9", "Café".encode())
    notification = json.loads(emu.ses_received(raw, ["hello@north.mail.test"], TOPIC, encoding="UTF8"))
    assert notification["content"] == raw.decode("utf-8")
    assert notification["receipt"]["action"]["encoding"] == "UTF8"


def test_signed_ses_notification_verifies_and_carries_the_mail(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    body = json.dumps(emu.ses_notification(RAW, ["hello@north.mail.test"], TOPIC, version=2)).encode()
    message = json.loads(body)
    verifier.verify(message)
    notification = json.loads(message["Message"])
    assert base64.b64decode(notification["content"]) == RAW


def test_post_headers_are_those_sns_sends(emu: SnsEmulator) -> None:
    message = emu.sign(emu.notification("Hello", TOPIC))
    headers = post_headers(message)
    assert headers["x-amz-sns-message-type"] == "Notification"
    assert headers["x-amz-sns-message-id"] == message["MessageId"]
    assert headers["x-amz-sns-topic-arn"] == TOPIC
    assert headers["x-amz-sns-subscription-arn"].startswith(TOPIC + ":")
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    confirmation = post_headers(emu.subscription_confirmation(TOPIC))
    assert confirmation["x-amz-sns-message-type"] == "SubscriptionConfirmation"
    assert "x-amz-sns-subscription-arn" not in confirmation


def test_iso_timestamp_has_milliseconds_and_z() -> None:
    assert iso_timestamp(datetime(2012, 5, 2, 0, 54, 6, 655321, tzinfo=timezone.utc)) == "2012-05-02T00:54:06.655Z"


# -- the certificate host and path are pinned (issue 13) -------------------------------------

@pytest.mark.parametrize("cert_url", [
    # S3 bucket hosts: the bucket "sns", path-style and website endpoints
    "https://sns.s3.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.s3-website-us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.s3-us-west-2.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.execute-api.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.s3.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.cn-north-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",      # China is .com.cn
    "https://sns.us-east-1.amazonaws.com.cn/SimpleNotificationService-0123abcd.pem",    # and only China
    # authority tricks
    "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-0123abcd.pem",      # trailing dot
    "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-0123abcd.pem",  # a port
    "https://sns.us-east-1.amazonaws.com:443@evil.example/SimpleNotificationService-0123abcd.pem",
    "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.amazonaws.com%2eevil.example/SimpleNotificationService-0123abcd.pem",
    "https://sns%2eus-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.amazonaws.com\\@evil.example/SimpleNotificationService-0123abcd.pem",
    "https://[::1]/SimpleNotificationService-0123abcd.pem",
    # path tricks
    "https://sns.us-east-1.amazonaws.com/%53impleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd%2epem",
    "https://sns.us-east-1.amazonaws.com/x/../SimpleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.amazonaws.com//SimpleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.amazonaws.com/bucket/SimpleNotificationService-0123abcd.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem;type=a",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-../../x.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123ABCD.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem?",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem?a=b",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123abcd.pem#f",
    "https://sns.us-east-1.amazonaws.com/evil.pem",
])
def test_default_pattern_refuses_known_bypasses(cert_url: str) -> None:
    with pytest.raises(SnsError):
        check_aws_url(cert_url, DEFAULT_CERT_HOST_PATTERN, pem=True)


@pytest.mark.parametrize("url", [
    "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
    "https://sns.ap-southeast-5.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
    "https://sns.cn-northwest-1.amazonaws.com.cn/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
    "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
])
def test_default_pattern_accepts_every_region_shape(url: str) -> None:
    check_aws_url(url, DEFAULT_CERT_HOST_PATTERN, pem=True)


def test_the_settings_default_is_the_verifiers_default() -> None:
    from gateway.settings import Settings
    assert Settings.model_fields["ses_cert_host_pattern"].default == DEFAULT_CERT_HOST_PATTERN


@pytest.mark.parametrize("subscribe_url", [
    "https://sns.s3.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:x&Token=ab",
    "https://sns.us-east-1.amazonaws.com/bucket/?Action=ConfirmSubscription&TopicArn=arn:x&Token=ab",
    "https://sns.us-east-1.amazonaws.com:8080/?Action=ConfirmSubscription&TopicArn=arn:x&Token=ab",
])
def test_subscribe_url_is_pinned_to_the_api_root(subscribe_url: str) -> None:
    with pytest.raises(SnsError):
        check_aws_url(subscribe_url, DEFAULT_CERT_HOST_PATTERN)


# -- a certificate URL that failed is not fetched again (issue 13) ---------------------------

@pytest.mark.parametrize("response, error", [
    (Response(404, b"Not Found"), SnsError),
    (Response(200, b"<html>not a certificate</html>"), SnsError),
    (Response(503, b"busy"), SnsUnavailable),
])
def test_a_failed_certificate_url_is_refused_from_memory(emu: SnsEmulator, response: Response,
                                                         error: type[SnsError]) -> None:
    clock = [time.time()]
    verifier = SnsVerifier(cert_host_pattern=emu.host_pattern, ca_file=emu.ca_file, max_age=10 * 3600,
                           clock=lambda: clock[0])
    path = "/SimpleNotificationService-0ff1ce.pem"
    url = emu.serve(path, response)
    for index in range(20):   # a forger repeating the URL
        message = emu.sign(emu.notification(f"forged {index}", TOPIC))
        with pytest.raises(error):
            verifier.verify({**message, "SigningCertURL": url})
    assert emu.fetches(path) == 1
    clock[0] += 601    # remembered for a while only: AWS may serve it later
    with pytest.raises(error):
        verifier.verify({**emu.sign(emu.notification("later", TOPIC)), "SigningCertURL": url})
    assert emu.fetches(path) == 2
    verifier.verify(emu.sign(emu.notification("the real one", TOPIC)))   # other URLs unaffected


def test_the_negative_cache_is_bounded(emu: SnsEmulator, verifier: SnsVerifier) -> None:
    from webhooks.sns import NEGATIVE_CACHE_SIZE
    message = emu.sign(emu.notification("forged", TOPIC))

    def path(index: int) -> str:
        return f"/SimpleNotificationService-{index:x}.pem"        # the emulator answers 404

    def forged(index: int) -> None:
        with pytest.raises(SnsError, match="HTTP 404"):
            verifier.verify({**message, "SigningCertURL": emu.base_url + path(index)})

    for index in range(NEGATIVE_CACHE_SIZE + 10):
        forged(index)
    forged(NEGATIVE_CACHE_SIZE + 9)        # the newest is still remembered ...
    assert emu.fetches(path(NEGATIVE_CACHE_SIZE + 9)) == 1
    forged(0)                              # ... the oldest was dropped to stay within the bound
    assert emu.fetches(path(0)) == 2
