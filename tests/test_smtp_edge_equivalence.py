"""Stock aiosmtpd 1.4.6 and the gateway's fast edge (gateway/inbound/smtp_edge.py), fed the same
sessions over real sockets, give the same replies, store the same bytes under the same
envelopes, and hang up alike.

Every case runs four ways: in turns (a client that waits for each reply, so a held reply would
stall it), pipelined (the whole session in one write, before the greeting has been read), in
random small pieces and byte by byte (each piece received by the server on its own:
tests/smtp_twins.py). Cuts at every byte of the end of DATA and of stuffed lines, generated
sessions, a client that closes in the middle of DATA and idle timeouts complete the proof.

The only difference allowed is the `250-PIPELINING` line the edge adds to a successful EHLO
(RFC 2920: it batches replies, so it says so). Replies are compared as one byte stream, so the
edge may send them in fewer segments. Where the expected reply codes are written down, they
are stock aiosmtpd's, checked too, so that each case shows what its name claims.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.smtp_twins import Client, Config, Lab, Transcript, converse

DEFAULT = Config()                          # data_size_limit 4096: big enough for every case below
UTF8 = Config(enable_SMTPUTF8=True)
SMALL_SIZE = Config(data_size_limit=1000)   # a line at aiosmtpd's limit is also over SIZE
IDLE = 0.5                                  # seconds without a valid command before aiosmtpd hangs up
QUICK = Config(timeout=IDLE)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    twins = Lab()
    yield twins
    twins.close()


# --- comparing ------------------------------------------------------------------------------

def as_stock_would(edge: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The edge's replies without the PIPELINING it advertises, always just before `250 HELP`."""
    for i, line in enumerate(edge):
        if line == b"250-PIPELINING":
            assert edge[i + 1] == b"250 HELP", f"PIPELINING out of place: {edge!r}"
    return tuple(line for line in edge if line != b"250-PIPELINING")


def assert_same(stock: Transcript, edge: Transcript) -> None:
    assert as_stock_would(edge.replies) == stock.replies
    assert edge.replies.count(b"250-PIPELINING") == stock.replies.count(b"250 HELP")
    assert edge.stored == stock.stored
    assert edge.hung_up == stock.hung_up


def both(lab: Lab, config: Config, script: Callable[[Client], object]) -> Transcript:
    """Run one script against stock and edge, one after the other; stock's transcript."""
    stock = converse(lab, "stock", config, script)
    edge = converse(lab, "edge", config, script)
    assert_same(stock, edge)
    return stock


def codes(transcript: Transcript) -> list[int]:
    return [int(line[:3]) for line in transcript.replies if line[3:4] != b"-"]


# --- sessions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    """Bytes a client sends at once, and how many replies they earn."""

    data: bytes
    replies: int = 1


def cmd(*lines: bytes) -> Turn:
    return Turn(b"".join(line + b"\r\n" for line in lines), len(lines))


def tx(body: bytes, sender: bytes = b"<a@b.c>", *rcpts: bytes) -> list[Turn]:
    """One transaction; `body` is the DATA stream, its final dot included."""
    return [cmd(b"MAIL FROM:" + sender), *(cmd(b"RCPT TO:" + r) for r in rcpts or [b"<x@y.z>"]),
            cmd(b"DATA"), Turn(body)]


@dataclass(frozen=True)
class Case:
    turns: tuple[Turn, ...]
    codes: tuple[int, ...] | None = None    # stock's final reply codes, greeting included
    config: Config = DEFAULT
    bytewise: bool = True                   # small enough to send a byte at a time

    @property
    def data(self) -> bytes:
        return b"".join(turn.data for turn in self.turns)


def session(*parts: Turn | list[Turn], hello: bytes | None = b"EHLO client.test", quit: bool = True,
            codes: Sequence[int] | None = None, config: Config = DEFAULT, bytewise: bool = True) -> Case:
    turns = [cmd(hello)] if hello else []
    for part in parts:
        turns += part if isinstance(part, list) else [part]
    if quit:
        turns.append(cmd(b"QUIT"))
    return Case(tuple(turns), tuple(codes) if codes is not None else None, config, bytewise)


OK_TX = (250, 250, 354, 250)            # MAIL, RCPT, DATA, end of data
EHLO_OK = (220, 250)
SMUGGLED = (b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled text\r\n")
NEXT = tx(b"next message\r\n.\r\n")     # the session goes on after a refusal


def smuggling(end: bytes) -> Case:
    """RFC 5321 2.3.8 / SMTP smuggling: only CRLF.CRLF ends DATA, so this is one message."""
    body = b"Subject: real\r\n\r\nreal body" + end + SMUGGLED + end + b"tail\r\n.\r\n"
    return session(tx(body), codes=(*EHLO_OK, *OK_TX, 221))


def long_line(length: int, accepted: bool, prefix: bytes = b"") -> Case:
    body = b"Subject: long\r\n\r\n" + prefix + b"x" * length + b"\r\nafter\r\n.\r\n"
    return session(tx(body), NEXT, codes=(*EHLO_OK, 250, 250, 354, 250 if accepted else 500, *OK_TX, 221))


def lines_of(total: int) -> bytes:
    """A message body of exactly `total` bytes as aiosmtpd counts them (lines of 100 + CRLF)."""
    full, rest = divmod(total, 102)
    assert rest == 0 or rest >= 2
    return (b"y" * 100 + b"\r\n") * full + (b"z" * (rest - 2) + b"\r\n" if rest else b"")


CASES: dict[str, Case] = {
    "plain": session(tx(b"Subject: hi\r\n\r\nHello\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "HELO, where MAIL parameters are refused": session(
        cmd(b"MAIL FROM:<a@b.c> SIZE=10"), tx(b"hi\r\n.\r\n"), hello=b"HELO client.test",
        codes=(*EHLO_OK, 501, *OK_TX, 221)),
    "two messages, two recipients": session(
        tx(b"one\r\n.\r\n", b"<a@b.c>", b"<x@y.z>", b"<w@y.z>"), tx(b"two\r\n.\r\n", b"<c@d.e>"),
        codes=(*EHLO_OK, 250, *OK_TX, *OK_TX, 221)),
    "EHLO twice, and EHLO resets the transaction": session(
        cmd(b"MAIL FROM:<a@b.c>", b"EHLO again.test", b"RCPT TO:<x@y.z>"), tx(b"hi\r\n.\r\n"),
        codes=(*EHLO_OK, 250, 250, 503, *OK_TX, 221)),
    # The end of data, and what only looks like it.
    "smuggling LF.LF": smuggling(b"\n.\n"),
    "smuggling LF.CRLF": smuggling(b"\n.\r\n"),
    "smuggling CRLF.LF": smuggling(b"\r\n.\n"),
    "smuggling CR.CRLF": smuggling(b"\r.\r\n"),
    "smuggling CR.CR": smuggling(b"\r.\r"),
    "bare CR and bare LF inside a message": session(
        tx(b"a\rb\nc\r\r\n\n\r\nd\n\r\n\r.\n\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "the empty message": session(tx(b".\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "a message of one stuffed dot": session(tx(b"..\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "a first line starting with ..": session(tx(b"..hidden\r\nnext\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "stuffed lines that look like the end": session(
        tx(b"a\r\n..\r\n...\r\n. \r\n.x\r\n..\r\n\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "8-bit bytes and NUL": session(
        tx(b"Subject: \xc3\xbcber\r\n\r\n\xff\xfe\x00\x80 \xe2\x82\xac\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "an empty line before the final dot": session(tx(b"text\r\n\r\n.\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    # Line length: aiosmtpd allows 1001 bytes with CRLF (998 octets of RFC 5322, plus RFC 6532's
    # slack and a transparent dot), so 999 octets pass and 1000 are refused, after the final dot.
    "line of 998 octets": long_line(998, accepted=True),
    "line of 999 octets": long_line(999, accepted=True),
    "line of 1000 octets refused": long_line(1000, accepted=False),
    "line of 1001 octets refused": long_line(1001, accepted=False),
    "line of 1002 octets refused by the reader's limit": long_line(1002, accepted=False),
    "line of 5000 octets refused": long_line(5000, accepted=False),
    # The transparent dot counts too: 998 octets behind it pass, 999 do not.
    "stuffed line of 999 octets with its dot": long_line(998, accepted=True, prefix=b"."),
    "stuffed line of 1000 octets with its dot refused": long_line(999, accepted=False, prefix=b"."),
    # SIZE (data_size_limit 4096): answered after the final dot, and the session goes on.
    "message exactly at SIZE": session(tx(lines_of(4096) + b".\r\n"), codes=(*EHLO_OK, *OK_TX, 221)),
    "message one byte over SIZE": session(
        tx(lines_of(4097) + b".\r\n"), NEXT, codes=(*EHLO_OK, 250, 250, 354, 552, *OK_TX, 221)),
    "message far over SIZE": session(
        tx(lines_of(20_400) + b".\r\n"), NEXT, codes=(*EHLO_OK, 250, 250, 354, 552, *OK_TX, 221),
        bytewise=False),
    "over SIZE, then a long line": session(
        tx(lines_of(4284) + b"L" * 2000 + b"\r\n.\r\n"), NEXT,
        codes=(*EHLO_OK, 250, 250, 354, 552, *OK_TX, 221), bytewise=False),
    "a long line, then over SIZE": session(
        tx(b"L" * 2000 + b"\r\n" + lines_of(4284) + b".\r\n"), NEXT,
        codes=(*EHLO_OK, 250, 250, 354, 500, *OK_TX, 221), bytewise=False),
    "a line at the limit is over a small SIZE first": session(
        tx(b"x" * 1001 + b"\r\n.\r\n"), tx(b"x" * 1002 + b"\r\n.\r\n"), NEXT, config=SMALL_SIZE,
        codes=(*EHLO_OK, 250, 250, 354, 552, 250, 250, 354, 500, *OK_TX, 221)),
    "MAIL SIZE= over the limit": session(
        cmd(b"MAIL FROM:<a@b.c> SIZE=5000"), tx(b"hi\r\n.\r\n", b"<a@b.c> SIZE=4000"),
        codes=(*EHLO_OK, 552, *OK_TX, 221)),
    # Pipelining (RFC 2920), even past the final dot.
    "commands pipelined after the final dot": session(
        cmd(b"MAIL FROM:<a@b.c>", b"RCPT TO:<x@y.z>", b"DATA"),
        Turn(b"first\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nsecond\r\n..\r\n.\r\nQUIT\r\n", 6),
        quit=False, codes=(*EHLO_OK, 250, 250, 354, 250, 250, 250, 354, 250, 221)),
    "a refused message with commands pipelined after it": session(
        cmd(b"MAIL FROM:<a@b.c>", b"RCPT TO:<x@y.z>", b"DATA"),
        Turn(b"y" * 1200 + b"\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nok\r\n.\r\nQUIT\r\n", 6),
        quit=False, codes=(*EHLO_OK, 250, 250, 354, 500, 250, 250, 354, 250, 221)),
    # Commands.
    "RSET in the middle of a transaction": session(
        cmd(b"MAIL FROM:<a@b.c>", b"RCPT TO:<x@y.z>", b"RSET", b"DATA", b"RSET x"), tx(b"hi\r\n.\r\n"),
        codes=(*EHLO_OK, 250, 250, 250, 503, 501, *OK_TX, 221)),
    # HELP lists and explains only commands whose method carries aiosmtpd's @syntax.
    "NOOP, HELP, VRFY, EXPN, unknown and empty commands": session(
        cmd(b"NOOP", b"NOOP with words", b"noop", b"HELP", b"HELP MAIL", b"HELP DATA", b"HELP ehlo", b"HELP NOSUCH",
            b"VRFY <a@b.c>", b"VRFY", b"EXPN list", b"XYZZY", b"", b"  ", b"\xc3\xbc"),
        Turn(b"NOOP\n", 1), Turn(b"NOOP\r\r\n", 1), Turn(b"\rNOOP\r\n", 1),
        codes=(*EHLO_OK, *[250] * 7, 501, 252, 501, 502, 500, 500, 500, 500, 250, 250, 500, 221)),
    "DATA before MAIL, before RCPT, and with an argument": session(
        cmd(b"DATA", b"MAIL FROM:<a@b.c>", b"DATA", b"RCPT TO:<x@y.z>", b"DATA now"), cmd(b"DATA"),
        Turn(b"hi\r\n.\r\n"), codes=(*EHLO_OK, 503, 250, 503, 250, 501, 354, 250, 221)),
    "commands before HELO": session(
        cmd(b"MAIL FROM:<a@b.c>", b"RCPT TO:<x@y.z>", b"DATA", b"NOOP", b"EHLO", b"HELO", b"EHLO late.test"),
        tx(b"hi\r\n.\r\n"), hello=None, codes=(220, 503, 503, 503, 250, 501, 501, 250, *OK_TX, 221)),
    "nested MAIL, RCPT before MAIL": session(
        cmd(b"RCPT TO:<x@y.z>", b"MAIL FROM:<a@b.c>", b"MAIL FROM:<c@d.e>", b"RCPT TO:<x@y.z>", b"DATA"),
        Turn(b"hi\r\n.\r\n"), codes=(*EHLO_OK, 503, 250, 503, 250, 354, 250, 221)),
    "a refused DATA's text read as commands": session(
        cmd(b"MAIL FROM:<a@b.c>"), Turn(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n", 5),
        codes=(*EHLO_OK, 250, 503, 500, 500, 500, 500, 221)),
    "command lines too long": session(
        cmd(b"NOOP " + b"n" * 600, b"MAIL FROM:<" + b"m" * 1100 + b"@b.c>", b"RCPT TO:<" + b"r" * 3000 + b">"),
        tx(b"hi\r\n.\r\n"), codes=(*EHLO_OK, 500, 500, 500, *OK_TX, 221)),
    "8-bit address without SMTPUTF8": session(
        cmd(b"MAIL FROM:<j\xc3\xb6rg@b.c>", b"MAIL FROM:<a@b.c> SMTPUTF8"), tx(b"hi\r\n.\r\n"),
        codes=(*EHLO_OK, 500, 501, *OK_TX, 221)),
    "QUIT with an argument": session(cmd(b"QUIT now"), codes=(*EHLO_OK, 501, 221)),
    "too many unknown commands hang up": session(
        cmd(b"ONE", b"TWO", b"THREE", b"FOUR", b"FIVE"), quit=False, codes=(*EHLO_OK, 500, 500, 500, 500, 502)),
    "a command over its call limit hangs up": session(
        cmd(b"NOOP", b"NOOP"), cmd(b"NOOP"), quit=False, codes=(*EHLO_OK, 250, 250, 421),
        config=Config(command_call_limit=(("NOOP", 2), ("*", 20)))),
    "UTF-8 with SMTPUTF8": session(
        tx(b"Subject: \xc3\xbc\r\n\r\n\xc3\xbc\r\n.\r\n", b"<j\xc3\xb6rg@b\xc3\xbccher.example> SMTPUTF8",
           b"<\xe7\x94\xb0\xe4\xb8\xad@example.jp>"),
        tx(b"hi\r\n.\r\n", b"<j\xc3\xb6rg@b.c>", b"<x@y.z>", b"<\xff@b.c>"), cmd(b"NOOP \xff", b"X\xc3\xbc"),
        config=UTF8, codes=(*EHLO_OK, *OK_TX, 250, *OK_TX, 250, 500, 221)),
}

# MAIL FROM and RCPT TO with odd paths: refused or read, the envelope shows what each made of it.
PATHS = [b"<a@b.c>", b"<>", b'<"john q. public"@b.c>', b'<"a\\"b"@b.c>', b"<a@b.c> SIZE=123 BODY=8BITMIME",
         b"<a@b.c> body=8bitmime", b"<a@b.c> BODY=7BIT", b"<a@b.c> BODY=BINARYMIME", b"<a@b.c> FOO=1",
         b"<a@b.c> SIZE=abc", b"<a@b.c> SIZE", b"<a@b.c> SIZE=", b"<a@b.c> NOTIFY=NEVER", b"a@b.c", b" <a@b.c>",
         b"<a@b.c", b"<a@b.c>>", b"<@r1.example,@r2.example:a@b.c>", b"<@r1.example:a@b.c>", b"<a@[127.0.0.1]>",
         b"<a@[IPv6:::1]>", b"<a@b.c.>", b"<.a@b.c>", b"<a..b@c.d>", b"<a.b@c-d.e>", b"<a@-b.c>", b"<a@b>",
         b"<a@b.c> (comment)", b"<a@b.c>\tSIZE=10", b"<a@b.c>SIZE=10", b"<a@b.c>  SIZE=10   BODY=7BIT",
         b"<" + b"x" * 65 + b"@b.c>", b"<a+tag@b.c>", b"<A@B.C>", b"<a b@c.d>", b"<a@b@c.d>", b"<@>", b"<a@>",
         b"a", b"<a>", b"FROM:<a@b.c>", b"<a@b.c> \x0b"]
for path in PATHS:
    CASES[f"path {path!r} after HELO"] = session(
        cmd(b"MAIL FROM:" + path, b"RSET", b"MAIL FROM:<a@b.c>", b"RCPT TO:" + path, b"RCPT TO:<x@y.z>"),
        cmd(b"DATA"), Turn(b"hi\r\n.\r\n"), cmd(b"MAIL FROM:" + path, b"RSET", b"MAIL FROM:" + path),
        hello=b"HELO client.test")
    CASES[f"path {path!r} after EHLO"] = session(
        cmd(b"MAIL FROM:" + path, b"RSET", b"MAIL FROM:<a@b.c>", b"RCPT TO:" + path, b"RCPT TO:<x@y.z>"),
        cmd(b"DATA"), Turn(b"hi\r\n.\r\n"))


# --- the four ways of sending a session -------------------------------------------------------

def in_turns(case: Case) -> Callable[[Client], None]:
    """A client that waits for its replies before it goes on: no reply may be held from it."""
    def script(client: Client) -> None:
        expected = 1
        client.read_replies(expected)
        for turn in case.turns:
            client.send(turn.data)
            expected += turn.replies
            client.read_replies(expected)
    return script


def pipelined(case: Case) -> Callable[[Client], None]:
    """The whole session in one write, before the greeting: aiosmtpd reads it when it is ready."""
    return lambda client: client.send(case.data)


def in_pieces(case: Case, seed: str) -> Callable[[Client], None]:
    data, rng = case.data, random.Random(seed)
    most = max(7, len(data) // 400)
    points, at = [], 0
    while at < len(data):
        at += rng.randint(1, most)
        points.append(at)
    return lambda client: client.send_cut(data, points)


def byte_by_byte(case: Case) -> Callable[[Client], None]:
    return lambda client: client.send_cut(case.data, range(len(case.data)))


MODES = ["turns", "pipelined", "pieces", "bytes"]


# The few cases too big to send a byte at a time are cut by the pieces mode instead.
SESSIONS = [(name, mode) for name in CASES for mode in MODES if mode != "bytes" or CASES[name].bytewise]


@pytest.mark.parametrize(("name", "mode"), SESSIONS)
def test_stock_and_edge_answer_and_store_alike(lab: Lab, name: str, mode: str) -> None:
    case = CASES[name]
    script = {"turns": in_turns, "pipelined": pipelined, "bytes": byte_by_byte}.get(mode)
    stock = both(lab, case.config, script(case) if script else in_pieces(case, name))
    if case.codes is not None:
        assert tuple(codes(stock)) == case.codes
    assert stock.hung_up


def test_smuggled_commands_stay_inside_the_one_message(lab: Lab) -> None:
    stock = both(lab, DEFAULT, pipelined(CASES["smuggling LF.LF"]))
    (stored,) = stock.stored
    assert stored.mail_from == "a@b.c" and stored.rcpt_tos == ("x@y.z",)
    assert stored.content == b"Subject: real\r\n\r\nreal body\n.\n" + SMUGGLED + b"\n.\ntail\r\n"


def test_stuffing_is_undone_once(lab: Lab) -> None:
    stock = both(lab, DEFAULT, pipelined(CASES["stuffed lines that look like the end"]))
    assert [s.content for s in stock.stored] == [b"a\r\n.\r\n..\r\n \r\nx\r\n.\r\n\r\n"]
    stock = both(lab, DEFAULT, pipelined(CASES["the empty message"]))
    assert [s.content for s in stock.stored] == [b""]


# --- every cut of the end of data -------------------------------------------------------------

ENDINGS = {
    "plain": b"Subject: x\r\n\r\nbody\r\n.\r\n",
    "stuffed": b"..first\r\nmid\r\n..\r\n.\r\n",
    "empty": b".\r\n",
    "LF.LF": b"a\n.\nb\r\n.\r\n",
    "CRLF.LF": b"a\r\n.\nb\r\n.\r\n",
    "LF.CRLF": b"a\n.\r\nb\r\n.\r\n",
    "CR.CRLF": b"a\r.\r\nb\r\n.\r\n",
    "CRLF CR": b"a\r\n\r.\r\n.\r\n",
}
_HEAD = b"EHLO client.test\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n"
_TAIL = b"NOOP\r\nQUIT\r\n"


@pytest.mark.parametrize("name", list(ENDINGS))
def test_a_cut_at_any_byte_of_the_message_and_its_end(lab: Lab, name: str) -> None:
    """Two reads, cut anywhere from just before DATA to just after the pipelined NOOP."""
    data = _HEAD + ENDINGS[name] + _TAIL
    for point in range(len(_HEAD) - 3, len(data) - 5):
        stock = both(lab, DEFAULT, lambda client, p=point: client.send_cut(data, [p]))
        assert codes(stock) == [*EHLO_OK, *OK_TX, 250, 221], f"cut at {point}"


@pytest.mark.parametrize("length", [998, 999, 1000, 1001, 1002, 1003])
@pytest.mark.parametrize("config", [DEFAULT, SMALL_SIZE], ids=["size 4096", "size 1000"])
def test_a_cut_around_the_line_limit(lab: Lab, length: int, config: Config) -> None:
    """aiosmtpd's reader notices a line over its limit by how much it holds, and before it
    counts it toward SIZE: cuts near the limit, and a message over SIZE either way."""
    line_at = len(_HEAD) + 3
    data = _HEAD + b"a\r\n" + b"x" * length + b"\r\n.\r\n" + _TAIL
    if config == SMALL_SIZE:
        answer = 500 if length > 1001 else 552
    else:
        answer = 250 if length + 2 <= 1001 else 500
    for offset in (*range(996, 1006), length + 1):
        stock = both(lab, config, lambda client, p=line_at + offset: client.send_cut(data, [p]))
        assert codes(stock) == [*EHLO_OK, 250, 250, 354, answer, 250, 221], f"cut at {offset}"


# --- generated sessions -----------------------------------------------------------------------

_BODY = st.sampled_from([b"a", b"Subject: x", b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"..", b"\xc3\xbc", b"\x00",
                         b"\xff", b"x" * 400, b"\r\n.\n", b"\n.\r\n"])
# Commands a session may hold between transactions: none of them starts DATA; few are unknown.
_EXTRA = st.sampled_from([b"NOOP", b"RSET", b"HELP", b"DATA x", b"MAIL FROM:<a@b.c> SIZE=9", b"MAIL FROM:a@b.c",
                          b"RCPT TO:<x@y.z>", b"VRFY <a@b.c>", b"", b"XYZZY", b"noop", b"MAIL FROM:<>"])


def ended_once(body: bytes) -> bytes:
    """`body` and its final dot, stuffed where it would end early, as a client would."""
    stream = bytearray(b"\r\n" + body + b"\r\n.\r\n")
    while (at := stream.find(b"\r\n.\r\n")) < len(stream) - 5:
        stream[at + 2:at + 2] = b"."
    return bytes(stream[2:])


@st.composite
def generated(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = [draw(st.sampled_from([b"EHLO client.test\r\n", b"HELO client.test\r\n"]))]
    unknown = 0
    for _ in range(draw(st.integers(1, 3))):
        for extra in draw(st.lists(_EXTRA, max_size=3)):
            unknown += extra == b"XYZZY"
            parts.append((b"NOOP" if unknown > 3 else extra) + b"\r\n")    # five would hang up
        parts.append(b"RSET\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n")
        parts.append(ended_once(b"".join(draw(st.lists(_BODY, max_size=12)))))
    parts.append(b"QUIT\r\n")
    data = b"".join(parts)
    return data, draw(st.lists(st.integers(0, len(data)), max_size=25))


@hsettings(max_examples=60, deadline=None)
@given(generated())
def test_generated_sessions_in_random_reads(lab: Lab, drawn: tuple[bytes, list[int]]) -> None:
    data, points = drawn
    stock = both(lab, DEFAULT, lambda client: client.send_cut(data, points))
    assert codes(stock)[-1] == 221


# --- a client that goes away in the middle of DATA ---------------------------------------------

def _into_data(client: Client, first_message: bool) -> None:
    client.send(_HEAD)
    client.read_replies(5)
    if first_message:
        client.send(b"first\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n")
        client.read_replies(9)


@pytest.mark.parametrize("first_message", [False, True], ids=["alone", "after a message"])
@pytest.mark.parametrize("partial", [b"some text", b"some text\r\n", b"text\r\n.", b"text\r\n.\r", b"text\n.\n",
                                     b"text\r\n..\r\n"])
def test_a_half_closed_connection_in_data_stores_nothing_and_answers_nothing(
        lab: Lab, partial: bytes, first_message: bool) -> None:
    def script(client: Client) -> None:
        _into_data(client, first_message)
        client.send(partial)
        client.half_close()

    stock = both(lab, DEFAULT, script)
    assert codes(stock)[-1] == 354                  # nothing after the 354: no 250, no error
    assert [s.content for s in stock.stored] == ([b"first\r\n"] if first_message else [])


@pytest.mark.parametrize("first_message", [False, True], ids=["alone", "after a message"])
def test_a_closed_connection_in_data_stores_nothing(lab: Lab, first_message: bool) -> None:
    outcome = {}
    for kind in ("stock", "edge"):
        client = Client(lab, kind, DEFAULT)
        _into_data(client, first_message)
        client.send(b"some text\r\nand more")
        client.sock.close()
        client.pace(DEFAULT.timeout)                # returns when the server has seen the end
        assert client.conn.lost, f"{kind} did not notice the close"
        outcome[kind] = [s.content for s in client.conn.recorder.stored]
        client.close()
    assert outcome["edge"] == outcome["stock"] == ([b"first\r\n"] if first_message else [])


# --- replies held for a batch when the session ends ------------------------------------------
# The edge holds a 250 while the client's next command is buffered. When that command's hook
# stalls (the gateway's RCPT looks the studio up in the database) and the session ends meanwhile,
# by the client's EOF or the idle timeout, stock aiosmtpd has already sent the 250; so must the
# edge, or a client never learns that its previous message was stored, and sends it again.

_STALLED = b"second\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nRCPT TO:<hold@y.z>\r\n"


@pytest.mark.parametrize("end", ["half close", "idle timeout"])
def test_replies_held_when_a_hook_stalls_are_sent_when_the_session_ends(lab: Lab, end: str) -> None:
    config = Config(holding_rcpt=True, timeout=IDLE if end == "idle timeout" else DEFAULT.timeout)

    def script(client: Client) -> None:
        client.send(_HEAD)
        client.read_replies(5)
        client.send(b"first\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\n")
        client.read_replies(9)
        client.send(_STALLED)
        client.wait_holding()
        if end == "half close":
            client.half_close()

    stock = both(lab, config, script)
    # The second message's 250 came, then MAIL's and the first RCPT's; the stalled RCPT never answers.
    assert codes(stock) == [*EHLO_OK, *OK_TX, *OK_TX, 250, 250]
    assert [s.content for s in stock.stored] == [b"first\r\n", b"second\r\n"]


# --- idle timeouts ------------------------------------------------------------------------------
# aiosmtpd's timeout runs from the last recognised command (SMTP._reset_timeout in the command
# loop), not from the last byte read: it hangs up silently (no 421) on a client that says
# nothing, on one that trickles a command or a message slower than that, and on one that sends
# only empty lines; commands that keep coming keep the session alive. The edge must agree.

def _trickle(client: Client, data: bytes, interval: float) -> None:
    for i in range(len(data)):
        client.send(data[i:i + 1])
        client.read_available()
        if client.pace(interval):                   # the server hung up: stop
            return


def _timed(lab: Lab, script: Callable[[Client], object]) -> tuple[Transcript, float, float]:
    """Both transcripts compared; stock's, and how long each server took from the greeting."""
    greeted = [0.0]

    def timed(client: Client) -> None:
        client.read_replies(1)
        greeted[0] = time.monotonic()
        script(client)

    stock = converse(lab, "stock", QUICK, timed)
    stock_took = time.monotonic() - greeted[0]
    edge = converse(lab, "edge", QUICK, timed)
    edge_took = time.monotonic() - greeted[0]
    assert_same(stock, edge)
    return stock, stock_took, edge_took


def test_a_silent_client_is_cut_off_without_a_reply(lab: Lab) -> None:
    stock, *took = _timed(lab, lambda client: None)
    assert codes(stock) == [220] and stock.hung_up
    assert all(IDLE * 0.9 <= t < IDLE + 3 for t in took), took


def test_a_command_trickled_byte_by_byte_is_cut_off(lab: Lab) -> None:
    stock, *took = _timed(lab, lambda client: _trickle(client, b"NOOP and words that take a while\r\n", 0.1))
    assert codes(stock) == [220] and stock.hung_up
    assert all(IDLE * 0.9 <= t < IDLE + 3 for t in took), took


def test_a_message_trickled_byte_by_byte_is_cut_off_and_not_stored(lab: Lab) -> None:
    def script(client: Client) -> None:
        client.send(_HEAD)
        client.read_replies(5)
        _trickle(client, b"Subject: slow\r\n\r\nslow body\r\n.\r\n", 0.1)

    stock, *took = _timed(lab, script)
    assert codes(stock) == [*EHLO_OK, 250, 250, 354] and not stock.stored and stock.hung_up
    assert all(IDLE * 0.9 <= t < IDLE + 3 for t in took), took


def test_commands_that_keep_coming_keep_the_session(lab: Lab) -> None:
    def script(client: Client) -> None:
        for _ in range(8):                          # 0.8 s in all, each well inside the timeout
            client.send(b"NOOP\r\n")
            client.read_available()
            assert not client.pace(0.1), "hung up on an active client"
        client.send(b"QUIT\r\n")

    stock, *_ = _timed(lab, script)
    assert codes(stock) == [220, *[250] * 8, 221]


def test_empty_lines_do_not_keep_the_session(lab: Lab) -> None:
    """An empty line is answered 500 but is no command: it doesn't reset the timer. How many
    500s come before the cut depends on timing, so only the kinds of reply are compared."""
    kinds = {}
    for kind in ("stock", "edge"):
        transcript = converse(lab, kind, QUICK, lambda client: _trickle(client, b"\r\n" * 100, 0.1))
        assert transcript.hung_up and not transcript.stored
        kinds[kind] = set(transcript.replies)
    assert kinds["edge"] == kinds["stock"] == {b"220 edge.test Python SMTP 1.4.6", b"500 Error: bad syntax"}
