"""Handing composed mail to the relay (aiosmtplib), or to a local Maildir when none is set.

One `RelayConnection` is one SMTP session, reused for many messages and reopened after any
error. Answers are sorted as Mailman's outgoing runner does: 4xx and connection trouble are
temporary (the outbox retries later), 5xx is permanent (the reply is marked failed with the
server's words, which the studio sees in the API).

Credentials never cross in clear. With `user:password@` in an `smtp://` URL the session must
turn to TLS with STARTTLS (RFC 3207) before AUTH; a relay that does not offer it (or whose
offer a man in the middle stripped from the EHLO answer, RFC 3207 §6) gets no AUTH and no
mail: the attempt is a temporary failure whose reason (NO_STARTTLS) the waiting replies carry,
which `/readyz` reports (outbox.relay_problem). The relay's certificate is checked against the system's CAs (aiosmtplib's default).
"""
from __future__ import annotations

import asyncio
import logging
import mailbox
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from gateway.outbound.compose import OutgoingMail

log = logging.getLogger(__name__)


NO_STARTTLS = ("the relay offers no STARTTLS, and its credentials are only ever sent encrypted "
               "(RFC 3207); retrying later")


# How a failure to reach the relay starts its detail; /readyz looks for it (outbound/readiness.py).
UNREACHABLE = "relay unreachable"


@dataclass(frozen=True)
class SendResult:
    kind: str      # sent | temporary | permanent
    detail: str    # the relay's answer or the error, for the record


class NoStartTls(aiosmtplib.SMTPException):
    """The relay would have had our credentials in clear."""


@dataclass(frozen=True)
class RelayUrl:
    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str | None

    @property
    def has_credentials(self) -> bool:
        return self.username is not None or self.password is not None

    @classmethod
    def parse(cls, url: str) -> RelayUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("relay URL must be smtp://host[:port] or smtps://host[:port]")
        return cls(host=parts.hostname, port=parts.port or (465 if parts.scheme == "smtps" else 587),
                   implicit_tls=parts.scheme == "smtps",
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


class Transport(Protocol):
    async def send(self, mail: OutgoingMail) -> SendResult: ...
    async def close(self) -> None: ...


class RelayConnection:
    def __init__(self, relay: RelayUrl, timeout: float, local_hostname: str) -> None:
        self.relay = relay
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connect(self) -> aiosmtplib.SMTP:
        """A session ready for MAIL: TLS when offered, and always before credentials."""
        must_tls = self.relay.has_credentials and not self.relay.implicit_tls
        smtp = aiosmtplib.SMTP(hostname=self.relay.host, port=self.relay.port, use_tls=self.relay.implicit_tls,
                               # Without credentials: STARTTLS when offered (opportunistic, RFC 3207).
                               start_tls=False if self.relay.implicit_tls or must_tls else None,
                               timeout=self.timeout, local_hostname=self.local_hostname)
        await smtp.connect()
        try:
            if must_tls:
                await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    raise NoStartTls(NO_STARTTLS)
                await smtp.starttls()  # says EHLO again over TLS (RFC 3207 §4.2)
            if self.relay.has_credentials:
                await smtp.login(self.relay.username or "", self.relay.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def send(self, mail: OutgoingMail) -> SendResult:
        try:
            if self._smtp is None or not self._smtp.is_connected:
                self._smtp = await self._connect()
            return await self._transaction(self._smtp, mail)
        except NoStartTls:
            await self.close()
            log.error("relay %s:%s offers no STARTTLS: not sending credentials in clear; mail waits",
                      self.relay.host, self.relay.port)
            return SendResult("temporary", NO_STARTTLS)
        except aiosmtplib.SMTPResponseException as exc:
            await self.close()
            return _by_code(exc.code, f"{exc.code} {exc.message}")
        except ValueError as exc:  # an address aiosmtplib will not put on a command line
            await self.close()
            return SendResult("permanent", f"address cannot be sent: {exc}"[:500])
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            await self.close()
            return SendResult("temporary", f"{UNREACHABLE}: {type(exc).__name__}: {exc}"[:500])

    @staticmethod
    async def _transaction(smtp: aiosmtplib.SMTP, mail: OutgoingMail) -> SendResult:
        """MAIL, RCPT, DATA through aiosmtplib's command methods rather than `sendmail`.

        sendmail parses every address twice and rewrites the line endings of the whole
        message twice (once only to count it for SIZE): about a third of the CPU a message
        cost the outbox (bench/outbound.py). Ours leaves compose with CRLF line ends, so
        its length is the SIZE; mail() and rcpt() still quote and check each address (no
        SMTP command injection), and data() still dot-stuffs. A refusal closes the session
        (send), so no RSET is needed. A non-ASCII address asks for SMTPUTF8 (RFC 6531),
        which sendmail would only have done if told to."""
        utf8 = not (mail.envelope_from.isascii() and all(r.isascii() for r in mail.recipients))
        if utf8 and not smtp.supports_extension("smtputf8"):
            return SendResult("permanent", "the relay does not offer SMTPUTF8, which this address needs")
        options = [f"SIZE={len(mail.data)}"] if smtp.supports_extension("size") else []
        if utf8:
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        await smtp.mail(mail.envelope_from, options=options, encoding=encoding)
        for recipient in mail.recipients:
            await smtp.rcpt(recipient, encoding=encoding)
        response = await smtp.data(mail.data)
        return SendResult("sent", response.message)

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None and smtp.is_connected:
            try:
                await asyncio.wait_for(smtp.quit(), 5)
            except Exception:  # closing a broken session: nothing left to do but drop it
                smtp.close()


def _by_code(code: int, detail: str) -> SendResult:
    return SendResult("permanent" if 500 <= code < 600 else "temporary", detail[:1000])


class MaildirTransport:
    """No relay configured: every message lands in a Maildir a developer can open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Made here, each part only if missing: `gateway serve`'s worker children start together,
        # and mailbox.Maildir(create=True) raised FileExistsError in the one that came second.
        for part in ("tmp", "new", "cur"):
            (path / part).mkdir(parents=True, exist_ok=True)
        self._box = mailbox.Maildir(str(path), create=False)

    async def send(self, mail: OutgoingMail) -> SendResult:
        key = await asyncio.to_thread(self._box.add, mail.data)
        return SendResult("sent", f"written to Maildir {self.path} as {key}")

    async def close(self) -> None:
        return None
