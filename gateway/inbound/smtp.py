"""The SMTP edge: cheap checks at RCPT, durable store at DATA, exact reply codes.

The handler only translates between SMTP and the ingest pipeline. aiosmtpd answers an
exception raised in a hook with a permanent `500`, which would bounce a guest's mail over our
own trouble, so every infrastructure error is caught here and answered `451 4.3.0`.
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Session, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from sqlalchemy import Engine

from gateway.inbound.acceptor import Acceptor, StorageFull, TemporaryFailure, log_accepted
from gateway.inbound.directory import StudioDirectory
from gateway.inbound.intake import Envelope, FloodLimited
from gateway.inbound.smtp_edge import DataRefused, FastSMTP, protocol_names
from gateway.mail.addresses import DIGEST_DETAIL, parse_studio_address
from gateway.metrics import mail_answered, recipient_refused
from gateway.settings import Settings

log = logging.getLogger(__name__)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# One place, one wording (RFC 3463 enhanced status codes).
OK_RCPT = "250 2.1.5 Recipient OK"
OK_QUEUED = "250 2.0.0 Message accepted for delivery ({id})"
ERR_NO_SUCH_USER = "550 5.1.1 No such mailbox here"
# An answer to a notification digest (gateway/mail/addresses.DIGEST_DETAIL): refused here, so the
# profile's own server bounces it to them with these words, and nothing we send can loop.
ERR_DIGEST_ANSWER = ("550 5.7.1 This digest covers several conversations and cannot be answered: "
                     "answer the conversation's own notification, or in the messenger")
ERR_TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
ERR_TEMPORARY = "451 4.3.0 Temporary local problem, please try again later"
# RFC 3463 X.3.1 "mail system full", RFC 5321 4.2.3 (452 "insufficient system storage"): our
# disk is full; the sender retries.
ERR_STORAGE_FULL = "452 4.3.1 Insufficient system storage, please try again later"
ERR_FLOOD = "450 4.7.1 Too many new conversations from this sender, please try again later"
ERR_NO_RCPT = "554 5.5.1 No valid recipients"
ERR_BAD_SENDER = "501 5.1.7 Bad sender address syntax"
OK_SENDER = "250 2.1.0 Sender OK"
# RFC 6531 3.7.4.2 (with RFC 6533's X.6.7): a non-ASCII mailbox needs the SMTPUTF8 parameter of
# MAIL. Without it the client has not promised an SMTPUTF8 transaction, and the reply it would
# get later (our acknowledgements, the studio's answers) could not be relayed back to it.
ERR_UTF8_SENDER = "553 5.6.7 Non-ASCII sender address needs the SMTPUTF8 parameter (RFC 6531)"
ERR_UTF8_RCPT = "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8 in MAIL FROM (RFC 6531)"
ERR_TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"
ERR_TOO_MANY_FROM_PEER = b"421 4.7.0 Too many connections from your address, try again later\r\n"
# A dictionary attack (RCPT after RCPT of guessed names) ends the session: RFC 5321 3.8 lets a
# server close with 421 at any time, and the client keeps its mail for another attempt.
ERR_TOO_MANY_UNKNOWN = "421 4.7.0 Too many unknown recipients, closing connection"
# RFC 3463 X.3.1 "mail system full": the DATA of all sessions together is over what we hold in
# memory at once. At DATA the transaction may simply be tried again later (452, which RFC 5321 4.3.2
# lists for DATA); mid-transfer the bytes already sent can't be refused politely, so 421.
ERR_DATA_BUSY = "452 4.3.1 Too much mail in transfer right now, try again later"
ERR_DATA_OVER = "421 4.3.1 Too much mail in transfer right now, closing connection"


def command_limits(settings: Settings) -> dict[str, int]:
    """Per-session command budgets (aiosmtpd answers `421 4.7.0` and hangs up past one).

    Commands that make no progress (NOOP, HELP, VRFY, EXPN, anything unlisted) share the
    configured cap; MAIL/RCPT/DATA/RSET are the progress of a connection that delivers many
    messages, so they get room for that.
    """
    idle = settings.smtp_max_commands_without_progress
    # MAIL and RSET have their own, lower budgets: a MAIL/RCPT/RSET loop probing addresses is
    # "progress" to the idle count, and would otherwise hold a connection for 10,000 rounds.
    return {"MAIL": settings.smtp_max_mail_per_session, "RCPT": 100_000, "DATA": 10_000,
            "RSET": settings.smtp_max_rset_per_session, "QUIT": 1,
            "EHLO": 10, "HELO": 10, "STARTTLS": 2, "NOOP": idle, "HELP": idle, "VRFY": idle,
            "EXPN": idle, "*": idle}


@dataclass
class DataBudget:
    """The DATA bytes all sessions of this server hold in memory at once, from the first chunk
    until the acceptor has answered: without a cap, GATEWAY_SMTP_MAX_CONNECTIONS sessions of
    GATEWAY_SMTP_MAX_MESSAGE_SIZE each (200 x 25 MB) may sit in memory together. Used only on
    the event loop, so a plain counter."""

    limit: int
    held: int = 0

    def room_for(self, size: int) -> bool:
        return self.held + size <= self.limit


def _declared_size(mail_options: list[str]) -> int:
    """The SIZE the client declared in MAIL FROM (RFC 1870), 0 if none; aiosmtpd checked it."""
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class GatewayHandler:
    def __init__(self, acceptor: Acceptor, directory: StudioDirectory, settings: Settings) -> None:
        self.acceptor = acceptor
        self.directory = directory
        self.settings = settings

    def __dir__(self) -> list[str]:
        # aiosmtpd's SMTP.__init__ searches dir(handler) for hooks on every connection (smtp_edge.py).
        return protocol_names(type(self))

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        # Control characters in a reverse-path are never valid (RFC 5321 4.1.2) and would
        # otherwise reach the database and logs; the null reverse-path "<>" arrives as "".
        if _CONTROL.search(address) or len(address) > 320:
            return ERR_BAD_SENDER
        if not envelope.smtp_utf8 and not address.isascii():  # aiosmtpd set it from the parameters
            return ERR_UTF8_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return OK_SENDER

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.settings.smtp_max_recipients:
            return ERR_TOO_MANY_RCPT
        if not envelope.smtp_utf8 and not address.isascii():
            return ERR_UTF8_RCPT
        studio = parse_studio_address(address, self.settings.mail_domain)
        if studio is None:
            return self._unknown(server)
        try:
            known = await self.directory.exists(studio.slug)
        except Exception:
            log.warning("RCPT lookup failed; answering temporary failure", exc_info=True)
            return ERR_TEMPORARY
        if not known:
            return self._unknown(server)
        if studio.detail == DIGEST_DETAIL:
            return ERR_DIGEST_ANSWER
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK_RCPT

    def _unknown(self, server: SMTP) -> str:
        """550 for an unknown recipient, until the session has had its share of them: then 421
        (GatewaySMTP hangs up after any 421)."""
        if isinstance(server, GatewaySMTP):
            server.unknown_rcpts += 1
            if server.unknown_rcpts > self.settings.smtp_max_unknown_rcpt_per_session:
                log.warning("%s: more than %d unknown recipients, closing", _peer_ip(server.session.peer),
                            self.settings.smtp_max_unknown_rcpt_per_session)
                return ERR_TOO_MANY_UNKNOWN
        return ERR_NO_SUCH_USER

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        if not envelope.rcpt_tos:
            return ERR_NO_RCPT
        raw = envelope.original_content or b""
        peer = session.peer
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        if session.host_name:
            peer_text += " helo=" + _CONTROL.sub("", session.host_name)[:100]
        stored = Envelope(mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos), peer=peer_text)
        try:
            inbound_id = await self.acceptor.accept(raw, stored)
        except FloodLimited:
            return ERR_FLOOD
        except StorageFull:
            return ERR_STORAGE_FULL
        except TemporaryFailure:
            return ERR_TEMPORARY
        except Exception:
            log.exception("unexpected error while storing a message")
            return ERR_TEMPORARY
        answer = OK_QUEUED.format(id=inbound_id)
        log_accepted(inbound_id, stored, len(raw), answer)
        return answer

    async def handle_exception(self, error: Exception) -> str:
        """Anything that escapes a hook: temporary, and nothing internal in the answer."""
        log.exception("SMTP session error", exc_info=error)
        return ERR_TEMPORARY


def _peer_ip(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class GatewaySMTP(FastSMTP):
    """The tuned aiosmtpd protocol (smtp_edge.py) with connection caps (overall and per peer
    address), a deadline for the whole DATA phase, a cap on the DATA bytes all sessions hold,
    and a hang-up after every 421."""

    def __init__(self, handler: GatewayHandler, *, counter: dict[str, int], max_connections: int,
                 data_timeout: float, per_peer: dict[str, int] | None = None, max_per_peer: int = 0,
                 data_budget: DataBudget | None = None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._counter = counter
        self._max_connections = max_connections
        self._per_peer = per_peer            # open connections per peer IP, shared by the server
        self._max_per_peer = max_per_peer
        self._peer = ""
        self._data_timeout = data_timeout
        self._budget = data_budget
        self._holding = 0                    # this session's part of the budget
        self._rejected = False
        self.unknown_rcpts = 0               # counted by GatewayHandler._unknown
        self._answering: str | None = None   # the command the next final reply answers (metrics)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.transport is None:  # not the STARTTLS re-entry
            refusal = b""
            peer = _peer_ip(transport.get_extra_info("peername"))
            if self._counter["open"] >= self._max_connections:
                refusal = ERR_TOO_MANY_CONNECTIONS
            elif self._per_peer is not None and self._per_peer.get(peer, 0) >= self._max_per_peer:
                refusal = ERR_TOO_MANY_FROM_PEER
                log.warning("%s: over %d connections from one address, refused", peer, self._max_per_peer)
            if refusal:
                self._rejected = True
                transport.write(refusal)  # type: ignore[attr-defined]
                transport.close()
                return
            self._counter["open"] += 1
            if self._per_peer is not None:
                self._peer = peer
                self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._rejected:
            return
        if self._original_transport is None or self.transport is not None:
            self._counter["open"] -= 1
            if self._per_peer is not None:
                left = self._per_peer.get(self._peer, 1) - 1
                if left > 0:
                    self._per_peer[self._peer] = left
                else:
                    self._per_peer.pop(self._peer, None)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._rejected:
            return False
        return super().eof_received()

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        if self._answering is not None and status[:1] not in ("3", b"3"):  # not the 354 "go ahead"
            answered, self._answering = self._answering, None
            if answered == "DATA":
                mail_answered("smtp", status)
            elif status[:1] not in ("2", b"2"):
                recipient_refused(status)
        # 421 means "closing the transmission channel" (RFC 5321 4.2.3): say it, then do it,
        # whether aiosmtpd (command limits) or our hooks (unknown recipients) said it.
        code = status[:3] if isinstance(status, bytes) else status[:3].encode()
        if code == b"421" and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        self._answering = "RCPT"   # a refused recipient is counted by its code (push)
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._answering = None

    @syntax("DATA")                    # without it, HELP would no longer list DATA
    async def smtp_DATA(self, arg: str | None) -> None:
        budget = self._budget
        self._answering = "DATA"
        if (budget is not None and self.envelope is not None and self.envelope.rcpt_tos and not arg
                and self.session is not None and self.session.host_name
                and not budget.room_for(max(1, _declared_size(self.envelope.mail_options)))):
            await self.push(ERR_DATA_BUSY)
            return
        # aiosmtpd resets its timer per command only, so this bounds the whole transfer.
        self._reset_timeout(self._data_timeout)
        try:
            await super().smtp_DATA(arg)  # type: ignore[arg-type]
        finally:
            self._reset_timeout()
            self._answering = None  # a session that drops mid-transfer got no answer
            if budget is not None:    # held until handle_DATA answered (the message is stored)
                budget.held -= self._holding
                self._holding = 0

    def _data_chunk(self, size: int) -> None:
        budget = self._budget
        if budget is None:
            return
        # Past the size limit the reader keeps only the last bytes (smtp_edge.DataReader): count
        # what it keeps, so an oversized message still ends in its 552, not in a 421.
        counted = min(size, max(0, (self.data_size_limit or size) - self._holding))
        self._holding += counted
        budget.held += counted
        if budget.held > budget.limit:
            log.warning("DATA in flight over %d bytes; closing a session mid-transfer", budget.limit)
            raise DataRefused(ERR_DATA_OVER)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.smtp_tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.smtp_tls_cert_file),
                            str(settings.smtp_tls_key_file) if settings.smtp_tls_key_file else None)
    return context


async def start_smtp_server(acceptor: Acceptor, engine: Engine, settings: Settings, *,
                            sock: socket.socket | None = None,
                            data_budget: DataBudget | None = None) -> asyncio.AbstractServer:
    """Start listening; pass `sock` (or port 0 in settings) for an ephemeral port in tests, and
    `data_budget` to watch the DATA bytes held (default: one of GATEWAY_SMTP_MAX_DATA_IN_FLIGHT).

    aiosmtpd's Controller cannot bind port 0, so the server is created on our own socket.
    """
    directory = StudioDirectory(engine, unknown_ttl=settings.smtp_unknown_rcpt_cache_seconds,
                                unknown_size=settings.smtp_unknown_rcpt_cache_size)
    handler = GatewayHandler(acceptor, directory, settings)
    counter = {"open": 0}
    per_peer: dict[str, int] = {}
    if data_budget is None:
        # One message of the largest size must always fit, whatever the setting says.
        data_budget = DataBudget(max(settings.smtp_max_data_in_flight, settings.smtp_max_message_size))
    context = tls_context(settings)
    loop = asyncio.get_running_loop()

    def factory() -> GatewaySMTP:
        # `loop=`: without it aiosmtpd looks the loop up per connection inside
        # warnings.catch_warnings(), which also resets every module's warning cache.
        return GatewaySMTP(
            handler, counter=counter, max_connections=settings.smtp_max_connections,
            per_peer=per_peer, max_per_peer=settings.smtp_max_connections_per_ip,
            data_budget=data_budget, data_timeout=settings.smtp_data_timeout,
            data_size_limit=settings.smtp_max_message_size, enable_SMTPUTF8=True, decode_data=False,
            hostname=settings.resolved_smtp_hostname, ident="studio-gateway ESMTP",
            tls_context=context, timeout=settings.smtp_idle_timeout,
            command_call_limit=command_limits(settings), loop=loop,
        )

    if sock is None:
        sock = socket.create_server((settings.smtp_host, settings.smtp_port), reuse_port=settings.reuse_port)
    server = await loop.create_server(factory, sock=sock)
    log.info("SMTP listening on %s", sock.getsockname())
    return server
