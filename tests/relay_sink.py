"""A real SMTP server standing in for the outbound relay: records what it is given.

aiosmtpd on 127.0.0.1 (a given port, or an ephemeral one), on its own event-loop thread.
`answer` decides what DATA gets: "250" (accept), or any refusal such as
"451 4.3.0 Try later" / "550 5.7.1 Relaying denied".

`tls` offers STARTTLS with that server context; `credentials` offers AUTH (also in clear, as a
misconfigured relay does, or as any relay looks once a man in the middle strips STARTTLS) and
records each login in `logins`; `wire` holds every byte the clients sent before any STARTTLS,
to prove a secret never crossed in clear. `hold` never answers DATA (a relay that hangs, so a
worker can be killed mid-send); `arrived` is set when a DATA is being held.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class _Handler:
    sink: "RelaySink"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.hold:
            self.sink.arrived.set()
            await asyncio.Event().wait()  # until the client goes away (aiosmtpd cancels us)
        if not self.sink.answer.startswith("250"):
            return self.sink.answer
        with self.sink.lock:
            self.sink.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                               list(envelope.mail_options)))
        return "250 2.0.0 Queued as sink"


class _RecordingSMTP(SMTP):
    """aiosmtpd's server, keeping the bytes that arrive on the plain socket."""

    def __init__(self, sink: "RelaySink", *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def data_received(self, data: bytes) -> None:
        if self.session is None or self.session.ssl is None:  # before STARTTLS: what an eavesdropper reads
            with self._sink.lock:
                self._sink.wire += data
        super().data_received(data)


@dataclass
class RelaySink:
    port: int = 0
    answer: str = "250"
    smtputf8: bool = True
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tls: ssl.SSLContext | None = None
    credentials: tuple[str, str] | None = None
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # (login, password, over TLS)
    wire: bytearray = field(default_factory=bytearray)
    hold: bool = False
    arrived: threading.Event = field(default_factory=threading.Event)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        with self.lock:
            self.logins.append((login, password, session.ssl is not None))
        return AuthResult(success=(login, password) == self.credentials)

    def __enter__(self) -> "RelaySink":
        self._loop = asyncio.new_event_loop()
        sock = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.port = sock.getsockname()[1]
        handler = _Handler(self)

        auth: dict[str, Any] = {}
        if self.credentials is not None:
            auth = dict(authenticator=self._authenticate, auth_require_tls=False)

        async def start() -> asyncio.AbstractServer:
            return await self._loop.create_server(
                lambda: _RecordingSMTP(self, handler, decode_data=False, enable_SMTPUTF8=self.smtputf8,
                                       hostname="relay.test", tls_context=self.tls, **auth), sock=sock)

        self._server = self._loop.run_until_complete(start())
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay-sink", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


def free_port() -> int:
    """A loopback port nobody listens on (for a relay that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
