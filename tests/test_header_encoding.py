"""compose's RFC 2047 header encoding folds where the stdlib's does, byte for byte.

gateway/outbound/compose._Utf8 replaces `Charset.header_encode_lines` (which measures every
prefix of a value, O(n²)) with a running count. Any difference in the folding would change
the bytes of every subject we send, so the two are compared on generated values: names and
subjects of every script, lengths around the 76-character fold, header names of any length.
"""
from __future__ import annotations

from email.header import Header

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outbound.compose import _UTF8, _encoded

_TEXT = st.text(alphabet=st.sampled_from(list("abc XYZ=?_\t\"()<>,;:äöüßÄ–€😀🎨👩\u200d\u00a0日本語テキスト")), max_size=320)
_NAMES = st.sampled_from(["Subject", "To", "X-A-Rather-Long-Header-Name-For-Folding-Tests"])


def _stdlib(value: str, name: str) -> str:
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


@settings(max_examples=400, deadline=None)
@given(value=_TEXT, name=_NAMES)
def test_folds_as_the_stdlib(value: str, name: str) -> None:
    assert Header(value, _UTF8, header_name=name).encode(linesep="\r\n") == _stdlib(value, name)


def test_a_notification_subject_is_encoded_as_the_stdlib_does() -> None:
    subject = "Neue Nachricht von Jürgen Müller: Anfrage Tattoo-Termin #123: Rose am Unterarm – Größe & Preis?"
    assert _encoded("Subject", subject) == _stdlib(subject, "Subject")
    assert _encoded("Subject", "Re: plain ASCII") == "Re: plain ASCII"
