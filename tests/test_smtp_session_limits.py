"""STARTTLS when a certificate is configured, and idle clients cut off."""
from __future__ import annotations

import datetime
import smtplib
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import make_settings, send_on, start_gateway
from tests.mail import make_mail


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_starttls_is_offered_with_a_certificate_and_mail_flows_over_it(tmp_path: Path, database_url: str) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    running = start_gateway(make_settings(tmp_path, database_url, smtp_tls_cert_file=cert_file,
                                          smtp_tls_key_file=key_file))
    try:
        studio = running.add_studio("inkwell")
        context = ssl.create_default_context(cafile=str(cert_file))
        context.check_hostname = False
        with running.smtp() as client:
            client.ehlo()
            assert client.has_extn("starttls")
            code, _ = client.starttls(context=context)
            assert code == 220
            client.ehlo()
            assert client.sock is not None and isinstance(client.sock, ssl.SSLSocket)
            assert send_on(client, make_mail(), studio.address).code == 250
        assert [r.status for r in running.process()] == ["done"]
    finally:
        running.stop()


def test_without_a_certificate_starttls_is_not_offered(gw) -> None:  # type: ignore[no-untyped-def]
    with gw.smtp() as client:
        client.ehlo()
        assert not client.has_extn("starttls")


def test_idle_connection_is_closed_by_the_server(tmp_path: Path, database_url: str) -> None:
    running = start_gateway(make_settings(tmp_path, database_url, smtp_idle_timeout=0.3))
    try:
        with socket.create_connection(("127.0.0.1", running.smtp_port), timeout=20) as sock:
            stream = sock.makefile("rb")
            assert stream.readline().startswith(b"220")
            assert stream.read() == b""  # blocks until the server hangs up (bounded by the socket timeout)
        with running.smtp() as client:  # and it keeps serving others
            assert client.noop()[0] == 250
    finally:
        running.stop()


def test_slow_data_transfer_is_cut_off_at_the_data_deadline(tmp_path: Path, database_url: str) -> None:
    running = start_gateway(make_settings(tmp_path, database_url, smtp_data_timeout=0.3))
    try:
        running.add_studio("inkwell")
        with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=20) as client:
            client.ehlo()
            client.mail("guest@example.org")
            client.rcpt("inkwell@mail.test")
            client.putcmd("DATA")
            assert client.getreply()[0] == 354
            client.send(b"Subject: slow\r\n\r\nnever finished")
            try:
                reply = client.getreply()
            except smtplib.SMTPServerDisconnected:
                reply = (-1, b"")
            assert reply[0] == -1  # the server closed the connection, storing nothing
    finally:
        running.stop()
