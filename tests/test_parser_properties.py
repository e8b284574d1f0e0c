"""Property tests: no bytes make parse, split_reply or classify raise.

Seeds are the scenario fixtures and CPython's email corpus; hypothesis mutates them
(bit flips, inserted CR/LF/NUL, truncation, duplicated boundaries, random headers).
"""
from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.inbound.automatic import AutoInfo, classify
from gateway.inbound.mime import ParsedMessage, parse
from gateway.inbound.quotes import split_reply

FIXTURES = Path(__file__).parent / "fixtures" / "eml"
CORPUS = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "test" / "test_email" / "data"
SEEDS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))] + \
    [p.read_bytes() for p in sorted(CORPUS.glob("msg_*.txt"))]

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(raw: bytes) -> None:
    msg = parse(raw)
    assert isinstance(msg, ParsedMessage)
    assert msg.parser in ("flanker", "stdlib", "headers-only")
    assert msg.date is None or msg.date.utcoffset() is not None
    assert all("\n" not in v and "\r" not in v for _, v in msg.headers)
    assert all("/" not in a.filename and "\\" not in a.filename and a.filename for a in msg.attachments)
    reply = split_reply(msg.text)
    assert isinstance(reply, str)
    if msg.text.strip():
        assert reply
    info = classify(msg, "")
    assert isinstance(info, AutoInfo) and info.automatic


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "truncate", "boundary", "header", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b"\r\n\r\n",
                                                  b"=?utf-8?q?=C3?=", b"\xff\xfe", b"--"]))
        elif op == "truncate":
            del data[pos:]
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "boundary":
            start = data.find(b"\n--", pos)
            if start >= 0:
                end = data.find(b"\n", start + 1)
                line = data[start:end if end > 0 else len(data)]
                data[start:start] = line * draw(st.integers(1, 20))
        elif op == "header":
            name = draw(st.sampled_from([b"Content-Type", b"Content-Disposition", b"Subject",
                                         b"From", b"References", b"Content-Transfer-Encoding",
                                         b"Date", b"Message-ID", b"X-Random"]))
            value = draw(st.binary(max_size=80))
            data[0:0] = name + b": " + value + b"\r\n"
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_messages_never_raise(raw: bytes) -> None:
    check(raw)


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(raw: bytes) -> None:
    check(raw)


header_names = st.sampled_from(["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID",
                                "In-Reply-To", "References", "Content-Type",
                                "Content-Transfer-Encoding", "Content-Disposition",
                                "Auto-Submitted", "Precedence", "List-Id", "MIME-Version"])


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    """Structurally plausible messages: random headers around random MIME trees."""
    def part(depth: int) -> bytes:
        if depth < 3 and draw(st.booleans()):
            boundary = draw(st.text("abcXYZ019=_-", min_size=1, max_size=12))
            sub = draw(st.sampled_from(["mixed", "alternative", "related", "report"]))
            children = b"".join(b"--" + boundary.encode() + b"\r\n" + part(depth + 1) + b"\r\n"
                                for _ in range(draw(st.integers(0, 4))))
            closing = b"--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b""
            return (f'Content-Type: multipart/{sub}; boundary="{boundary}"\r\n\r\n'.encode()
                    + children + closing)
        ctype = draw(st.sampled_from(["text/plain", "text/html", "image/png",
                                      "message/delivery-status", "message/rfc822",
                                      "text/rfc822-headers", "application/pdf"]))
        charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "x-unknown", "utf8", "", "zlib"]))
        cte = draw(st.sampled_from(["", "base64", "quoted-printable", "8bit", "x-uue"]))
        body = draw(st.binary(max_size=300))
        head = f"Content-Type: {ctype}; charset={charset}\r\n"
        if cte:
            head += f"Content-Transfer-Encoding: {cte}\r\n"
        if draw(st.booleans()):
            head += "Content-Disposition: attachment; filename*=utf-8''%2E%2E%2Fx%00.bin\r\n"
        return head.encode() + b"\r\n" + body

    headers = b"".join(
        draw(header_names).encode() + b": "
        + draw(st.text(max_size=60)).encode("utf-8", "surrogatepass") + b"\r\n"
        for _ in range(draw(st.integers(0, 8))))
    return headers + part(0)


@SETTINGS
@given(generated())
def test_generated_messages_never_raise(raw: bytes) -> None:
    check(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_split_reply_never_raises_and_never_empties(text: str) -> None:
    reply = split_reply(text)
    assert isinstance(reply, str)
    assert bool(reply) == bool(text.strip())


# The fast paths of gateway/inbound/mime/ must read a value exactly as the general code does.
_ADDRESS_PIECES = st.sampled_from(["Jörg", "Inkwell", "Tattoo", "=?utf-8?q?J=C3=B6rg?=", "a.b", "x@y.example",
                                   "<", ">", "\"", "(", ")", ",", ";", ":", ".", " ", "  ", "\t", "@", "-", "_"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_ADDRESS_PIECES, max_size=8).map("".join))
def test_plain_address_fast_path_reads_as_getaddresses(value: str) -> None:
    import email.utils

    from gateway.inbound.mime.fields import _address_pairs

    assert _address_pairs(value) == email.utils.getaddresses([value])


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0xff), max_size=80))
def test_plain_header_fast_path_decodes_as_the_charset_chain(value: str) -> None:
    from gateway.inbound.mime.charsets import _decode_words, decode_header_value

    assert decode_header_value(value) == _decode_words(value.replace("\r", "").replace("\n", ""))


_MARKER_LINES = st.sampled_from([
    "On Mon, 1 Jan 2024 at 10:00, X <x@y> wrote:", "Am 01.01.2024 um 10:00 schrieb X <x@y>:", "-- ", "--",
    "-----Original Message-----", "----- Ursprüngliche Nachricht -----", "From: a", "*Von:* b", "Sent: c",
    "Gesendet: d", "Subject: e", "Betreff: f", "__________", "Sent from my iPhone", "Von meinem iPhone gesendet",
    "Get Outlook for iOS", "ſent from my iPhone", "ON 1 jan wrote:", "am 3.", "Hallo", "> quoted", "", "wrote:",
    "Datum: 2", "Aber", "Grüße",
    # the tourist languages (issue 13): attributions, Outlook headers, separators, footers
    "Le 01/01/2024 à 10:00, X a écrit :", "Il 01/01/24 10:00, X ha scritto:", "El 1 ene 2024, X escribió:",
    "Op 1 jan. 2024 om 10:00 schreef X <x@y>:", "pon., 1 sty 2024 o 10:00 X napisał(a):",
    "W dniu 01.01.2024 o 10:00, X pisze:", "пн, 1 янв. 2024 г. в 10:00, X <x@y>:", "01.01.2024, X пишет:",
    "01.01.2024 10:00 tarihinde X yazdı:", "Em 1 de jan. de 2024, X escreveu:", "X escreveu no dia 1/01/2024:",
    "Studio Nadelwerk <", "x@y> wrote:", "De : a", "Envoyé : b", "Objet : c", "Od: d", "Wysłano: e",
    "Temat: f", "От: g", "Отправлено: h", "Тема: i", "Kimden: j", "Gönderildi: k", "Konu: l",
    "-----Message d'origine-----", "-----Исходное сообщение-----", "Envoyé de mon iPhone",
    "Отправлено с iPhone", "Wysłane z mojego iPhone'a", "dear", "10:00:"])
_WHITESPACE = st.sampled_from(["", " ", "\t", "\xa0", "\u2003", "\x1c", "\x85", "\u200b"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_WHITESPACE, _MARKER_LINES, _WHITESPACE, st.booleans()).map(
    lambda t: (t[0] + t[1] + t[2]).swapcase() if t[3] else t[0] + t[1] + t[2]), max_size=12))
def test_quote_marker_prefilter_finds_what_every_pattern_finds(lines: list[str]) -> None:
    from gateway.inbound.quotes import _first_marker

    assert _first_marker(lines) == _first_marker(lines, prefilter=False)
