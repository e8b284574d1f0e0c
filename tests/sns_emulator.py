"""Amazon SNS (and the SES receipt rule SNS action) emulated at its HTTP boundary.

A real HTTPS server on 127.0.0.1 serves the signing certificate and answers ConfirmSubscription,
and messages are signed the way SNS signs them, so webhooks/sns.py is tested end to end over real
TLS with nothing mocked. The string to sign is built here independently of webhooks/sns.py (by
byte-sorting the signed field names, as the AWS documentation words it), so a mistake in the
production code cannot be mirrored by the emulator.

Bodies follow the AWS documentation: "Parsing message formats" (SNS headers and JSON), "Contents
of notifications for Amazon SES email receiving" and its examples (the SES notification); see
the module docstring of webhooks/sns.py for the addresses.

PKI: once per process, a small CA issues the TLS certificate for localhost/127.0.0.1 and the
default self-signed signing certificate is made; all are written to a temporary directory that is
removed at exit. `ca_file` (module attribute, and on each emulator) is that CA, for
`SnsVerifier(ca_file=...)`.
"""
from __future__ import annotations

import atexit
import base64
import datetime as dt
import http.server
import ipaddress
import json
import re
import secrets
import shutil
import socket
import socketserver
import ssl
import string
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from email.utils import formataddr, getaddresses, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SES_SUBJECT = "Amazon SES Email Receipt Notification"   # the Subject SES gives its SNS notifications
_SIGNED = {
    "Notification": frozenset({"Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"}),
    "SubscriptionConfirmation": frozenset({"Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                           "TopicArn", "Type"}),
    "UnsubscribeConfirmation": frozenset({"Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                          "TopicArn", "Type"}),
}
_SIGNATURE_FIELDS = ("SignatureVersion", "Signature", "SigningCertURL")


# -- keys and certificates ----------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SNS emulator (tests)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SigningKey:
    """What SNS signs with: an RSA key and the certificate published at SigningCertURL."""
    private_key: rsa.RSAPrivateKey
    cert_pem: bytes


def make_signing_key(*, valid_from: dt.datetime | None = None,
                     valid_until: dt.datetime | None = None) -> SigningKey:
    """A fresh RSA-2048 key with a self-signed certificate (valid one year unless told)."""
    start = valid_from or _now() - dt.timedelta(days=1)
    end = valid_until or _now() + dt.timedelta(days=365)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder()
            .subject_name(_name("sns.amazonaws.com"))
            .issuer_name(_name("sns.amazonaws.com"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return SigningKey(key, _pem(cert))


class _Pki:
    """The per-process CA, TLS server certificate and default signing key."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sns-emulator-"))
        atexit.register(shutil.rmtree, self.directory, True)
        now = _now()
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_cert = (x509.CertificateBuilder()
                   .subject_name(_name("SNS emulator test CA"))
                   .issuer_name(_name("SNS emulator test CA"))
                   .public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        server_cert = (x509.CertificateBuilder()
                       .subject_name(_name("localhost"))
                       .issuer_name(ca_cert.subject)
                       .public_key(server_key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(days=1))
                       .not_valid_after(now + dt.timedelta(days=365))
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.SubjectAlternativeName([
                           x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                      critical=False)
                       .sign(ca_key, hashes.SHA256()))
        self.ca_file = str(self.directory / "ca.pem")
        Path(self.ca_file).write_bytes(_pem(ca_cert))
        self.server_chain_file = str(self.directory / "server.pem")
        Path(self.server_chain_file).write_bytes(
            _pem(server_cert) + server_key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        self.signing_key = make_signing_key()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_chain_file)
        return context


_pki_instance: _Pki | None = None
_pki_lock = threading.Lock()


def _pki() -> _Pki:
    global _pki_instance
    with _pki_lock:
        if _pki_instance is None:
            _pki_instance = _Pki()
        return _pki_instance


def default_signing_key() -> SigningKey:
    return _pki().signing_key


def __getattr__(name: str) -> Any:  # PEP 562: `sns_emulator.ca_file`, created on first use
    if name == "ca_file":
        return _pki().ca_file
    raise AttributeError(name)


# -- the wire format ----------------------------------------------------------------------------

def string_to_sign(message: dict[str, Any]) -> bytes:
    """Per the AWS procedure: the signed fields present in the message, in byte-sort order,
    each as "Name\\nValue\\n"."""
    names = sorted((k for k in _SIGNED[message["Type"]] if k in message), key=lambda k: k.encode())
    return "".join(f"{k}\n{message[k]}\n" for k in names).encode("utf-8")


def iso_timestamp(moment: dt.datetime | None = None) -> str:
    """SNS and SES style: UTC, milliseconds, "Z" (2012-05-02T00:54:06.655Z)."""
    moment = (moment or _now()).astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def post_headers(message: dict[str, Any]) -> dict[str, str]:
    """The HTTP headers SNS sends with a message (subscription ARN only where AWS sends it)."""
    headers = {
        "x-amz-sns-message-type": message["Type"],
        "x-amz-sns-message-id": message["MessageId"],
        "x-amz-sns-topic-arn": message["TopicArn"],
    }
    unsubscribe = message.get("UnsubscribeURL")
    if unsubscribe:
        arn = parse_qs(urlsplit(unsubscribe).query).get("SubscriptionArn")
        if arn:
            headers["x-amz-sns-subscription-arn"] = arn[0]
    headers["Content-Type"] = "text/plain; charset=UTF-8"
    headers["User-Agent"] = "Amazon Simple Notification Service Agent"
    return headers


def _header_fields(raw: bytes) -> list[tuple[str, str]]:
    """Header fields of a raw message, unfolded the way SES lists them in `mail.headers`."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\r?\n[ \t]+", " ", head)
    fields = []
    for line in re.split(r"\r?\n", unfolded):
        name, colon, value = line.partition(":")
        if colon and name and not name[0].isspace():
            fields.append((name.strip(), value.strip()))
    return fields


def _ses_message_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(40))


def ses_received(raw: bytes, recipients: list[str], topic_arn: str, *, encoding: str = "BASE64",
                 source: str | None = None) -> str:
    """The JSON SES publishes for a receipt rule SNS action: notificationType "Received", the
    `receipt` (envelope recipients, verdicts, the action with its encoding), the `mail` (built
    from the raw message's headers) and the raw message as `content`."""
    if encoding not in ("BASE64", "UTF8"):
        raise ValueError("encoding is BASE64 or UTF8")
    fields = _header_fields(raw)

    def values(name: str) -> list[str]:
        return [v for n, v in fields if n.lower() == name]

    def addresses(name: str) -> list[str]:
        return [formataddr(pair) for pair in getaddresses(values(name)) if pair[1]]

    common: dict[str, Any] = {}
    if values("return-path"):
        common["returnPath"] = parseaddr(values("return-path")[0])[1]
    for key, header in (("from", "from"), ("replyTo", "reply-to"), ("sender", "sender"),
                        ("to", "to"), ("cc", "cc"), ("bcc", "bcc")):
        if addresses(header):
            common[key] = addresses(header)
    for key, header in (("date", "date"), ("messageId", "message-id"), ("subject", "subject")):
        if values(header):
            common[key] = values(header)[0]
    if source is None:
        source = common.get("returnPath") or parseaddr(values("from")[0] if values("from") else "")[1]
    destination = [addr for _, addr in getaddresses(values("to") + values("cc")) if addr]
    stamp = iso_timestamp()
    notification = {
        "notificationType": "Received",
        "receipt": {
            "timestamp": stamp,
            "processingTimeMillis": 222,
            "recipients": list(recipients),
            "spamVerdict": {"status": "PASS"},
            "virusVerdict": {"status": "PASS"},
            "spfVerdict": {"status": "PASS"},
            "dkimVerdict": {"status": "PASS"},
            "dmarcVerdict": {"status": "PASS"},
            "action": {"type": "SNS", "topicArn": topic_arn, "encoding": encoding},
        },
        "mail": {
            "timestamp": stamp,
            "source": source,
            "messageId": _ses_message_id(),
            "destination": destination,
            "headersTruncated": False,
            "headers": [{"name": n, "value": v} for n, v in fields],
            "commonHeaders": common,
        },
        "content": (base64.b64encode(raw).decode("ascii") if encoding == "BASE64"
                    else raw.decode("utf-8", "replace")),
    }
    return json.dumps(notification)


# -- the HTTPS server ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True   # False: an HTTP/1.0 body that ends when the connection closes


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 5   # a stuck client cannot hold the emulator open at exit
    server_version = "SNS-emulator"

    def setup(self) -> None:
        super().setup()
        self.connection.do_handshake()   # here, in the handler thread, never in the accept loop

    def do_GET(self) -> None:
        self._answer(self.server.emulator._respond("GET", self.path))

    def do_POST(self) -> None:
        self._answer(self.server.emulator._respond("POST", self.path))

    def do_HEAD(self) -> None:
        self._answer(self.server.emulator._respond("HEAD", self.path))

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.content_length:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False   # server_close() joins every handler thread: nothing outlives the test
    block_on_close = True

    def __init__(self, emulator: SnsEmulator, context: ssl.SSLContext) -> None:
        self.emulator = emulator
        self.ssl_context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the FQDN of 127.0.0.1 (reverse DNS): not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass   # a client that hangs up mid-body (as the verifier does on oversized answers) is fine


class SnsEmulator:
    """Amazon SNS at its HTTPS boundary, on 127.0.0.1 port 0, reached as https://localhost:<port>.

    Serves the signing certificate at /SimpleNotificationService-<hex>.pem, answers
    GET /?Action=ConfirmSubscription&TopicArn=...&Token=... (200 for a token it issued, 400 as
    AWS does otherwise) and /?Action=Unsubscribe, and records every request as (method, path with
    query) in `requests`. `serve()` adds canned answers (redirects, oversized bodies).
    """

    host_pattern = r"^localhost:[0-9]+$"   # the emulator listens on an ephemeral port

    def __init__(self, *, signing_key: SigningKey | None = None) -> None:
        pki = _pki()
        self._context = pki.server_context()
        self.signing_key = signing_key or pki.signing_key
        self.ca_file = pki.ca_file
        self.cert_path = f"/SimpleNotificationService-{uuid.uuid4().hex}.pem"
        self.requests: list[tuple[str, str]] = []
        self.confirmations: list[tuple[str, str]] = []   # (TopicArn, Token)
        self.unsubscribes: list[str] = []                # SubscriptionArn
        self._tokens: dict[str, str] = {}                # Token -> TopicArn
        self._routes: dict[str, Response] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def __enter__(self) -> SnsEmulator:
        self._server = _Server(self, self._context)
        self.port = self._server.server_address[1]
        self.base_url = f"https://localhost:{self.port}"
        self.cert_url = self.base_url + self.cert_path
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="sns-emulator", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # -- what the server does --

    def serve(self, path: str, response: Response) -> str:
        """Answer GETs of `path` with `response`; returns the full URL."""
        with self._lock:
            self._routes[path] = response
        return self.base_url + path

    def fetches(self, path: str) -> int:
        """How many requests asked for `path` (query ignored)."""
        with self._lock:
            return sum(1 for _, p in self.requests if urlsplit(p).path == path)

    def _respond(self, method: str, target: str) -> Response:
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append((method, target))
            route = self._routes.get(split.path)
            if route is not None:
                return route
            if method != "GET":
                return Response(405, b"")
            if split.path == self.cert_path:
                return Response(200, self.signing_key.cert_pem, {"Content-Type": "application/x-x509-ca-cert"})
            action = query.get("Action") if split.path == "/" else None
            if action == "ConfirmSubscription":
                topic, token = query.get("TopicArn", ""), query.get("Token", "")
                if self._tokens.get(token) != topic:
                    return _xml(400, _error("InvalidParameter", "Invalid token"))
                self.confirmations.append((topic, token))
                return _xml(200, (
                    '<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                    f"<ConfirmSubscriptionResult><SubscriptionArn>{topic}:{uuid.uuid4()}</SubscriptionArn>"
                    f"</ConfirmSubscriptionResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
                    "</ResponseMetadata></ConfirmSubscriptionResponse>"))
            if action == "Unsubscribe":
                self.unsubscribes.append(query.get("SubscriptionArn", ""))
                return _xml(200, '<UnsubscribeResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                                 f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
                                 "</UnsubscribeResponse>")
            return Response(404, b"Not Found")

    # -- what SNS posts --

    def sign(self, message: dict[str, Any], version: int = 1) -> dict[str, Any]:
        """A copy of `message` with SignatureVersion, Signature and SigningCertURL as SNS sets
        them (SHA1withRSA for version 1, SHA256withRSA for 2), in SNS's field order."""
        digest = {1: hashes.SHA1(), 2: hashes.SHA256()}[version]
        unsigned = {k: v for k, v in message.items() if k not in _SIGNATURE_FIELDS}
        signature = self.signing_key.private_key.sign(string_to_sign(unsigned), padding.PKCS1v15(), digest)
        signed = {k: v for k, v in unsigned.items() if k != "UnsubscribeURL"}
        signed["SignatureVersion"] = str(version)
        signed["Signature"] = base64.b64encode(signature).decode("ascii")
        signed["SigningCertURL"] = self.cert_url
        if "UnsubscribeURL" in unsigned:
            signed["UnsubscribeURL"] = unsigned["UnsubscribeURL"]
        return signed

    def notification(self, message: str, topic_arn: str, subject: str | None = None) -> dict[str, Any]:
        """An unsigned Notification body (Subject only when given, as SNS omits it)."""
        body: dict[str, Any] = {"Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": topic_arn}
        if subject is not None:
            body["Subject"] = subject
        body["Message"] = message
        body["Timestamp"] = iso_timestamp()
        body["UnsubscribeURL"] = (f"{self.base_url}/?Action=Unsubscribe"
                                  f"&SubscriptionArn={topic_arn}:{uuid.uuid4()}")
        return body

    def subscription_confirmation(self, topic_arn: str) -> dict[str, Any]:
        """An unsigned SubscriptionConfirmation whose SubscribeURL points at this emulator."""
        token = secrets.token_hex(128)
        with self._lock:
            self._tokens[token] = topic_arn
        return {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic_arn,
            "Message": (f"You have chosen to subscribe to the topic {topic_arn}.\n"
                        "To confirm the subscription, visit the SubscribeURL included in this message."),
            "SubscribeURL": f"{self.base_url}/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}",
            "Timestamp": iso_timestamp(),
        }

    def ses_received(self, raw: bytes, recipients: list[str], topic_arn: str, *,
                     encoding: str = "BASE64") -> str:
        return ses_received(raw, recipients, topic_arn, encoding=encoding)

    def ses_notification(self, raw: bytes, recipients: list[str], topic_arn: str, *,
                         encoding: str = "BASE64", version: int = 1) -> dict[str, Any]:
        """The signed SNS Notification SES's receipt rule SNS action makes of one received mail."""
        return self.sign(self.notification(ses_received(raw, recipients, topic_arn, encoding=encoding),
                                           topic_arn, subject=SES_SUBJECT), version)


def _error(code: str, message: str) -> str:
    return ('<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
            f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")


def _xml(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8"), {"Content-Type": "text/xml"})
