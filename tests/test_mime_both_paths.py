"""Every fixture reads the same whichever parser built the part tree (issue 13).

flanker builds the tree for almost all mail; the stdlib (compat32) builds it when flanker
gives up. The body is then decoded by one charset chain (``mime.charsets``), so the text,
the HTML and the attachments must come out identical on both paths.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.inbound.mime.body import fill_body
from gateway.inbound.mime.limits import Limits
from gateway.inbound.mime.parsed import ParsedMessage
from gateway.inbound.mime.tree import flanker_tree, stdlib_tree

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "eml").glob("*.eml"))


def _through(path: str, raw: bytes) -> ParsedMessage:
    result = ParsedMessage(from_=None)
    if path == "flanker":
        tree = flanker_tree(raw, Limits([]))
    else:
        tree, _found = stdlib_tree(raw, Limits([]))
    fill_body(result, tree)
    return result


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.name for p in FIXTURES])
def test_fixture_reads_the_same_on_both_paths(fixture: Path) -> None:
    raw = fixture.read_bytes()
    flanker, stdlib = _through("flanker", raw), _through("stdlib", raw)
    assert stdlib.text == flanker.text
    assert stdlib.html == flanker.html
    assert [(a.filename, a.content_type, a.inline, a.content_id, a.data)
            for a in stdlib.attachments] == \
        [(a.filename, a.content_type, a.inline, a.content_id, a.data)
         for a in flanker.attachments]
    assert stdlib.dsn_failed_recipients == flanker.dsn_failed_recipients
    assert stdlib.dsn_original_message_ids == flanker.dsn_original_message_ids


def test_fixture_set_is_there() -> None:
    assert len(FIXTURES) >= 15


def test_cp1252_labelled_ascii_on_the_stdlib_path() -> None:
    raw = (FIXTURES[0].parent / "cp1252_mislabeled.eml").read_bytes()
    assert _through("stdlib", raw).text == "„Kostet das 200 €?“ – fragt Max."


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable"])
def test_eight_bit_body_keeps_its_bytes_on_the_stdlib_path(cte: str) -> None:
    """8-bit bytes where the transfer encoding says they can't be (real Windows mailers
    do it): the stdlib path reads them as flanker does, and decodes "=E4" in QP once."""
    body = "Grüße, 20 € =E4".encode("cp1252") if cte == "quoted-printable" \
        else "Grüße, 20 €".encode("cp1252")
    raw = (b"From: a@example.de\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=us-ascii\r\n"
           b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + body + b"\r\n")
    flanker, stdlib = _through("flanker", raw), _through("stdlib", raw)
    assert stdlib.text == flanker.text
    assert stdlib.text.startswith("Grüße, 20 €")
