"""The SMTP edge's own reading of MAIL/RCPT paths and auth members must answer exactly as
aiosmtpd's does: gateway/inbound/smtp.py replaces two per-connection costs of aiosmtpd 1.4 with
equivalents, and these tests hold them to the original."""
from __future__ import annotations

import asyncio
from typing import Iterator

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings as hsettings, strategies as st

from gateway.settings import Settings
from gateway.inbound.smtp import GatewayHandler, GatewaySMTP, command_limits


@pytest.fixture(scope="module")
def protocol() -> Iterator[GatewaySMTP]:
    loop = asyncio.new_event_loop()
    handler = GatewayHandler.__new__(GatewayHandler)
    yield GatewaySMTP(handler, counter={"open": 0}, max_connections=1, data_timeout=1, data_size_limit=1000,
                      enable_SMTPUTF8=True, decode_data=False, hostname="mail.test", ident="test",
                      command_call_limit=command_limits(Settings(data_dir="/tmp/unused")), loop=loop)
    loop.close()


CASES = ["<guest@example.org>", "<a@b.c> SIZE=10", "<a@b.c>  SIZE=10 BODY=8BITMIME", "<a@b.c>\tX",
         "<a.b@c-d.e>", "<a..b@c.d>", "<a@b>", "<a@-b.c>", '<"q r"@b.c>', "<a@b.c> (comment)", "<>", "a@b.c",
         "<a@b.c>x", "<a@[1.2.3.4]>", "<ü@b.c>", "<@relay:a@b.c>", "<a@b.c> ", "<a@b.c.>", "<a+tag@mail.test>",
         "<" + "x" * 65 + "@b.c>", "", " <a@b.c>", "<a@b.c", "<a@b.c>>"]


def _outcome(read: object, arg: str) -> object:
    """The answer, or the exception type: the email parser itself raises on some input ('<')."""
    try:
        return read(arg)  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc)


@pytest.mark.parametrize("arg", CASES)
def test_path_reading_matches_aiosmtpd(protocol: GatewaySMTP, arg: str) -> None:
    assert _outcome(protocol._getaddr, arg) == _outcome(lambda a: SMTP._getaddr(protocol, a), arg)


@hsettings(max_examples=400, deadline=None)
@given(st.text(alphabet="<>@.a-z+\"( )\t:[]ü0=", max_size=30))
def test_path_reading_matches_aiosmtpd_on_generated_input(protocol: GatewaySMTP, arg: str) -> None:
    assert _outcome(protocol._getaddr, arg) == _outcome(lambda a: SMTP._getaddr(protocol, a), arg)


def test_auth_mechanisms_are_those_aiosmtpd_finds(protocol: GatewaySMTP) -> None:
    assert sorted(protocol._auth_methods) == ["LOGIN", "PLAIN"]
    assert all(m.is_builtin for m in protocol._auth_methods.values())
