"""The fast edge's DATA reader reads every message as aiosmtpd's line loop does, however the
bytes are cut into reads: the same end, the same un-stuffing, the same refusals in the same
order, and what followed the final dot handed back untouched.

The reference below is aiosmtpd 1.4.6's `smtp_DATA` loop restated over whole lines (CRLF is the
only line end; a line longer than the reader's limit is noticed before it is counted, one just
over the line limit after); tests/test_smtp_edge_equivalence.py holds the real aiosmtpd and the
edge to the same answers over sockets.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.inbound.smtp_edge import DataReader, DataTooLong, DataTooMuch

LINE_LIMIT = 1001  # aiosmtpd's SMTP.line_length_limit


def reference(stream: bytes, size_limit: int, line_limit: int = LINE_LIMIT) -> tuple[object, bytes]:
    """(content, or the refusal's type; what followed the end) as aiosmtpd reads `stream`."""
    state, num, lines, pos = "ok", 0, [], 0
    while True:
        cut = stream.find(b"\r\n", pos)
        assert cut >= 0, "every test stream has an end"
        line = stream[pos:cut + 2]
        pos = cut + 2
        if line == b".\r\n":
            break
        if len(line) - 2 > line_limit and state == "ok":     # the reader's limit: noticed first
            state = "long"
        num += len(line)
        if state == "ok" and size_limit and num > size_limit:
            state = "much"
        if state == "ok" and len(line) > line_limit:
            state = "long"
        if state == "ok":
            lines.append(line[1:] if line.startswith(b".") else line)
    rest = stream[pos:]
    if state == "long":
        return DataTooLong, rest
    if state == "much":
        return DataTooMuch, rest
    return b"".join(lines), rest


def read_in(chunks: list[bytes], size_limit: int) -> tuple[object, bytes]:
    """What the edge reads; chunks after the one holding the end are what the command loop reads next."""
    reader = DataReader(size_limit, LINE_LIMIT)
    for i, chunk in enumerate(chunks):
        later = b"".join(chunks[i + 1:])
        try:
            content = reader.feed(chunk)
        except (DataTooLong, DataTooMuch) as refusal:
            return type(refusal), reader.rest + later
        if content is not None:
            return content, reader.rest + later
    raise AssertionError("the end was not found")


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p for p in points if 0 < p < len(stream)})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]


PIPELINED = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"

CASES = {
    "plain": b"Subject: x\r\n\r\nHallo\r\n.\r\n",
    "empty": b".\r\n",
    "first line stuffed": b"..hidden\r\nnext\r\n.\r\n",
    "stuffed lines": b"a\r\n..b\r\n.c\r\n...\r\n.\r\n",
    "LF.LF is text": b"a\n.\nb\r\n.\r\n",
    "LF.CRLF is text": b"a\n.\r\nb\r\n.\r\n",
    "CRLF.LF is text": b"a\r\n.\nb\r\n.\r\n",
    "CR.CRLF is text": b"a\r.\r\nb\r\n.\r\n",
    "bare CR and LF kept": b"a\rb\nc\r\n.\r\n",
    "pipelined after the dot": b"x\r\n.\r\n" + PIPELINED,
    "line at the limit": b"x" * (LINE_LIMIT - 2) + b"\r\n.\r\n",
    "line one over": b"x" * (LINE_LIMIT - 1) + b"\r\n.\r\n",
    "line two over": b"x" * LINE_LIMIT + b"\r\n.\r\n",
    "very long line": b"y" * 5000 + b"\r\nok\r\n.\r\n" + PIPELINED,
    "dot line inside a long line": b"z" * 1500 + b"\r\n.\r\nNOOP\r\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("size_limit", [0, 20, 1000, 4096])
def test_every_split_into_two_reads_matches_aiosmtpd(name: str, size_limit: int) -> None:
    stream = CASES[name]
    expected = reference(stream, size_limit)
    step = 1 if len(stream) < 200 else 97
    for point in [*range(0, len(stream), step), *range(max(0, len(stream) - 60), len(stream))]:
        assert read_in(cut(stream, [point]), size_limit) == expected, f"split at {point}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_byte_by_byte_matches_aiosmtpd(name: str) -> None:
    stream = CASES[name]
    assert read_in([stream[i:i + 1] for i in range(len(stream))], 4096) == reference(stream, 4096)


_PIECES = st.sampled_from([b"a", b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"..", b"x" * 400, b"\xc3\xbc"])


@hsettings(max_examples=300, deadline=None)
@given(body=st.lists(_PIECES, max_size=40), size_limit=st.sampled_from([0, 50, 800, 2000]),
       seed=st.integers(0, 2**32 - 1))
def test_generated_messages_in_random_reads_match_aiosmtpd(body: list[bytes], size_limit: int, seed: int) -> None:
    stream = b"".join(body) + b"\r\n.\r\n" + PIPELINED
    rng = random.Random(seed)
    points = [rng.randrange(len(stream)) for _ in range(rng.randrange(0, 12))]
    assert read_in(cut(stream, points), size_limit) == reference(stream, size_limit)


def test_over_the_size_limit_only_the_tail_is_kept() -> None:
    """A message past SIZE is answered 552 without holding it: memory stays a few bytes."""
    reader = DataReader(1000, LINE_LIMIT)
    assert reader.feed(b"a" * 500 + b"\r\n") is None
    for _ in range(2000):                       # 2 MB more, in lines
        assert reader.feed(b"b" * 998 + b"\r\n") is None
        assert len(reader._buf) <= 4
    with pytest.raises(DataTooMuch):
        reader.feed(b".\r\nQUIT\r\n")
    assert reader.rest == b"QUIT\r\n"
