"""Provider form bodies: the fast splitter and the streaming parser must read every body alike."""
from __future__ import annotations

import httpx
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from webhooks.forms import Form, FormError, _parse_multipart, _split_multipart, parse_form

names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters='"\\\r\n'), min_size=1,
                max_size=20)
values = st.binary(max_size=300)


def _encode(fields: list[tuple[str, bytes]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data={}, files=[(n, (fn, data, "application/octet-stream"))
                                                               for n, fn, data in files]
                            + [(n, (None, v)) for n, v in fields])  # type: ignore[arg-type]
    return request.read(), request.headers["content-type"]


def _as_tuple(form: Form) -> tuple[object, object]:
    return (form.fields, {k: [(f.filename, f.content_type, f.data) for f in v] for k, v in form.files.items()})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=6), st.lists(st.tuples(names, names, values), max_size=3))
def test_fast_split_and_streaming_parser_agree(fields: list[tuple[str, bytes]],
                                               files: list[tuple[str, str, bytes]]) -> None:
    assume(fields or files)  # an empty form is not sent as multipart at all
    body, content_type = _encode(fields, files)
    boundary = content_type.split("boundary=", 1)[1]
    fast = _split_multipart(body, boundary)
    assert fast is not None, "a plain form post must take the fast path"
    assert _as_tuple(fast) == _as_tuple(_parse_multipart(body, boundary))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
@example(noise=b"\x00", cut=194)  # a NUL in a header name: the fast path took it, the parser refuses it
def test_damaged_bodies_never_disagree(noise: bytes, cut: int) -> None:
    body, content_type = _encode([("recipient", b"inkwell@mail.test"), ("body-mime", b"From: a@b\r\n\r\nhi")], [])
    boundary = content_type.split("boundary=", 1)[1]
    damaged = body[:cut] + noise + body[cut:]
    fast = _split_multipart(damaged, boundary)
    if fast is None:
        return  # unusual: the streaming parser decides
    try:
        slow = _parse_multipart(damaged, boundary)
    except FormError:
        pytest.fail("the fast path accepted a body the streaming parser refuses")
    assert _as_tuple(fast) == _as_tuple(slow)


def test_fields_keep_their_bytes_in_any_charset() -> None:
    body = (b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nGr\xfc\xdfe\r\n'
            b'--b\r\nContent-Disposition: form-data; name="charsets"\r\n\r\n{"text":"iso-8859-1"}\r\n--b--\r\n')
    form = parse_form(body, "multipart/form-data; boundary=b")
    assert form.raw("text") == b"Gr\xfc\xdfe" and form.text("text", "iso-8859-1") == "Grüße"
    assert parse_form(b"a=%FC&b=x+y", "application/x-www-form-urlencoded").fields == {"a": [b"\xfc"], "b": [b"x y"]}


@pytest.mark.parametrize("body, content_type", [
    (b"{}", "application/json"),
    (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx", "multipart/form-data; boundary=b"),
    (b"whatever", "multipart/form-data"),
])
def test_what_is_not_a_form_is_a_form_error(body: bytes, content_type: str) -> None:
    with pytest.raises(FormError):
        parse_form(body, content_type)
