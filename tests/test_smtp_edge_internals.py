"""Loud guards for the private parts gateway/inbound/smtp_edge.py relies on.

The fast edge replaces four of aiosmtpd 1.4.6's methods with equivalents and reads a little of
asyncio's StreamReader. An upgrade that changes any of them must stop here, with the name of
what changed, before it can change what the gateway answers: then re-read the new code, carry
its change into smtp_edge.py, and record the new fingerprint.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP

from gateway.inbound.smtp_edge import FastSMTP

# sha256 of inspect.getsource(SMTP.<name>), first 16 hex digits, as read in aiosmtpd 1.4.6.
CHECKED_VERSION = "1.4.6"
FINGERPRINTS = {
    "__init__": "8a9ca80f23ad9bf2",        # dir()/getmembers() for smtp_*/auth_*: __dir__ answers them
    "smtp_DATA": "3a33f30d3fd6d02f",       # replaced whole: checks, limits, un-stuffing, handle_DATA
    "_getaddr": "0aeb21c56ac1260e",        # fast path in front of the same parser
    "push": "15f4f1de5e30c337",            # replaced: encoding, logging, write + drain
    "smtp_EHLO": "1d91592dd954c4cd",       # wrapped: PIPELINING before the last line
    "connection_made": "77a45df5065bba34",  # wrapped: TCP_NODELAY before aiosmtpd's own
    "_handle_client": "0e4d096403af6c74",  # the command loop: reads commands with readuntil()
    "eof_received": "baab5aaf93160933",    # wrapped: held replies go out before it cancels the session
    "_timeout_cb": "10a7351f9bec2818",     # wrapped: held replies go out before it closes
}


def test_aiosmtpd_is_the_version_the_edge_was_checked_against() -> None:
    assert aiosmtpd.__version__ == CHECKED_VERSION


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_replaced_aiosmtpd_methods_are_unchanged(name: str) -> None:
    source = inspect.getsource(getattr(SMTP, name))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == FINGERPRINTS[name], (
        f"aiosmtpd's SMTP.{name} changed: re-check gateway/inbound/smtp_edge.py against it")


def test_the_reader_is_where_the_edge_looks_for_it() -> None:
    """SMTP keeps the connection's StreamReader as `_reader`, created with the line limit."""
    source = inspect.getsource(SMTP)
    assert "self._reader = reader" in source
    assert "limit=self.line_length_limit" in source
    assert SMTP.line_length_limit == 1001


async def _reader_behaviour() -> None:
    reader = asyncio.StreamReader(limit=1001)
    assert isinstance(reader._buffer, bytearray)  # type: ignore[attr-defined]
    reader.feed_data(b"message\r\n.\r\nNOOP\r\nQU")
    assert await reader.read(1 << 30) == b"message\r\n.\r\nNOOP\r\nQU"     # read(n) hands over all
    assert not reader._buffer  # type: ignore[attr-defined]
    reader.feed_data(b"NOOP\r\nQU")                                        # handed back in front
    reader.feed_data(b"IT\r\n")
    assert b"\n" in reader._buffer  # type: ignore[attr-defined]
    assert await reader.readuntil() == b"NOOP\r\n"
    assert await reader.readuntil() == b"QUIT\r\n"
    reader.feed_eof()
    assert reader.at_eof()


def test_stream_reader_hands_over_everything_and_takes_back_in_front() -> None:
    asyncio.run(_reader_behaviour())


def test_protocol_names_are_those_aiosmtpd_finds() -> None:
    """__dir__ answers only smtp_*/auth_* names; aiosmtpd must find the same commands and AUTH."""
    class Handler:
        async def handle_DATA(self, *args: object) -> str:
            return "250 OK"

    loop = asyncio.new_event_loop()
    try:
        stock, fast = SMTP(Handler(), loop=loop), FastSMTP(Handler(), loop=loop)
        assert sorted(fast._smtp_methods) == sorted(stock._smtp_methods)
        assert sorted(fast._auth_methods) == sorted(stock._auth_methods)
        assert sorted(fast._handle_hooks) == sorted(stock._handle_hooks) == ["DATA"]
    finally:
        loop.close()


def test_the_gateway_handler_shows_aiosmtpd_every_hook() -> None:
    """GatewayHandler answers dir() from a cache: aiosmtpd must still find all its handle_* hooks."""
    from gateway.inbound.smtp import GatewayHandler

    hooks = sorted(n for n in vars(GatewayHandler) if n.startswith("handle_"))
    assert hooks and [n for n in dir(GatewayHandler.__new__(GatewayHandler)) if n.startswith("handle_")] == hooks


@pytest.mark.parametrize("cls", ["FastSMTP", "GatewaySMTP"])
def test_replaced_commands_keep_aiosmtpd_s_help_syntax(cls: str) -> None:
    """HELP lists, and explains, only the commands whose method carries @syntax: an override
    without it drops that command from HELP (`HELP DATA` would answer 501)."""
    from gateway.inbound.smtp import GatewaySMTP

    ours = {"FastSMTP": FastSMTP, "GatewaySMTP": GatewaySMTP}[cls]
    attributes = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")
    for name in (n for n in dir(SMTP) if n.startswith("smtp_")):
        stock, replaced = getattr(SMTP, name), getattr(ours, name)
        assert [getattr(replaced, a, None) for a in attributes] == [getattr(stock, a, None) for a in attributes], name
