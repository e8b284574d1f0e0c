"""Hostile input for every extractor, at the largest size it can be given.

Each extractor reads text a stranger controls: HTML, addresses, encoded words, RFC 2231
parameters, subjects, DSN parts, webhook fields. Regular expressions and hand-written parsers
can cost the square of their input on a few shapes of it (a long run that almost matches),
and at the sizes we accept that is hours. The inputs here are those shapes: a run of each
structurally meaningful character, and of each pair of them, followed by each probe that
can make a match fail at the very end; plus the shapes that were found quadratic before.

The bounds are generous on purpose: a linear extractor takes milliseconds to a few seconds
here, a quadratic one minutes to hours. They guard against the square, not for speed. Every
batch runs in a forked child that is killed at its bound, so a regression fails the test
instead of hanging the suite.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest

from gateway.inbound.automatic import classify
from gateway.inbound.headers import MAX_HEADER_BYTES, HeaderPeek, peek
from gateway.inbound.mime import (
    ParsedMessage,
    decode_header_value,
    html_to_text,
    parse,
    parse_addresses,
)
from gateway.inbound.mime.limits import MAX_HEADER_VALUE_CHARS, MAX_HTML_CHARS
from gateway.mail.subjects import normalize_subject, reply_subject
from tests import providers as p
from tests.conftest import make_settings, start_gateway
from webhooks.compose import ComposeError, mime_from_postmark, mime_from_sendgrid
from webhooks.forms import Form, FormError, parse_form

Case = tuple[str, Callable[[], object]]

# A run of one character, then a probe that may fail a match at the end.
PROBES = ("", "!", "\n", "x", " ", "<", ">", "@", "\"", ";", "(", "?=")


def runs(alphabet: str, size: int, probes: Iterable[str] = PROBES) -> Iterable[str]:
    """Runs of each character and each pair of characters of `alphabet`, `size` long, each
    followed by each probe: the shapes on which backtracking and rescanning blow up."""
    probes = tuple(probes)
    for a in alphabet:
        for probe in probes:
            yield a * size + probe
    for a in alphabet:
        for b in alphabet:
            if a != b:
                yield (a + b) * (size // 2) + probes[len(a + b) % len(probes)]


def _run_cases(cases: list[Case], channel: multiprocessing.connection.Connection) -> None:
    for label, call in cases:
        channel.send(("start", label))
        started = time.perf_counter()
        try:
            call()
        except Exception as exc:  # reported, so the test names the input
            channel.send(("error", f"{label}: {type(exc).__name__}: {exc}"[:500]))
            return
        channel.send(("done", time.perf_counter() - started))
    channel.close()


def assert_bounded(cases: Iterable[Case], each: float) -> None:
    """Run `cases` in a forked child; fail if one raises or takes longer than `each` seconds."""
    cases = list(cases)
    context = multiprocessing.get_context("fork")  # the cases are closures: forked, not pickled
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_cases, args=(cases, sender), daemon=True)
    child.start()
    sender.close()
    try:
        for _ in cases:
            kind, label = receiver.recv()
            assert kind == "start", label
            if not receiver.poll(each):
                pytest.fail(f"{label!r} took more than {each} s (quadratic?)")
            kind, value = receiver.recv()
            assert kind == "done", value
    finally:
        child.kill()
        child.join()
        receiver.close()


def _label(text: str) -> str:
    return repr(text[:12]) + f"... ({len(text)} chars)"


# --------------------------------------------------------------------------- HTML

@pytest.mark.parametrize("markup", [
    "<a " * (MAX_HTML_CHARS // 3),                    # html.parser: 9.5 s at 30 KB
    "<!--" * (MAX_HTML_CHARS // 4),                   # unclosed comments: html.parser 1.2 s at 40 KB
    "<!--" + "<a>" * (MAX_HTML_CHARS // 3 - 2),
    "<?" * (MAX_HTML_CHARS // 2),
    "</a" * (MAX_HTML_CHARS // 3),
    "<!--" + "x" * (MAX_HTML_CHARS - 4),
    "<div>" * (MAX_HTML_CHARS // 5),                  # html5ever: 11 s at 320 KB
    "< b" * (MAX_HTML_CHARS // 3),
    '<a x="' * (MAX_HTML_CHARS // 6),                 # unclosed quoted values
    "<a x='>" * (MAX_HTML_CHARS // 7),
    "<b> </b>" * (MAX_HTML_CHARS // 8),               # runs of spaces between sentinels
    "<pre>" + "\t" * (MAX_HTML_CHARS - 6) + "x",
    "<script>" * (MAX_HTML_CHARS // 8),
    "&#" + "1" * (MAX_HTML_CHARS - 2),                # int() refuses 4,300+ digits
    "</" * (MAX_HTML_CHARS // 2),
    "<!" * (MAX_HTML_CHARS // 2),
    "<p>" + "&amp" * (MAX_HTML_CHARS // 4),
], ids=lambda m: repr(m[:8]))
def test_html_to_text_at_its_cap(markup: str) -> None:
    assert_bounded([(_label(markup), lambda: html_to_text(markup))], each=30)


def test_html_to_text_runs() -> None:
    size = 128 * 1024
    assert_bounded(((_label(m), lambda m=m: html_to_text(m)) for m in runs("<>/!-=\"' a&#;\t", size,
                                                                           ("", "x", ">", "-->"))), each=5)


def test_html_to_text_reads_as_before() -> None:
    """The forward-only tokenizer keeps what readers of html.parser's text relied on."""
    assert html_to_text('<p class="a>b">Preis &lt; 200&nbsp;&euro;</p><p>x</p>') == "Preis < 200 €\n\nx"
    assert html_to_text("a < b<br>c") == "a < b\nc"
    assert html_to_text("<style>p{}</style><script>if (a<b) x()</script>Hallo") == "Hallo"
    assert html_to_text("Hallo<!-- unclosed comment <p>gone") == "Hallo"
    assert html_to_text('Hallo<img alt="unclosed') == "Hallo"
    assert html_to_text("<textarea><b>raw</b></textarea>") == "<b>raw</b>"
    assert html_to_text("&#" + "1" * 5000 + ";x") == "\ufffdx"


# ----------------------------------------------------------------- addresses, From

ADDRESS_ALPHABET = 'a@<>" ,;:()[]\\.='
SHORT_ADDRESS_ALPHABET = 'a@<>",:('


def test_from_of_the_header_peek() -> None:
    """The acceptor reads From in the group commit, on the event loop: 40 KB of "a@" held
    SMTP and HTTP for 8.7 s. Its first line can be as long as the whole header block."""
    size = MAX_HEADER_BYTES - 64
    cases = [(_label(v), lambda v=v: HeaderPeek(fields={"from": v}).from_email)
             for v in runs(ADDRESS_ALPHABET, size, ("", "<", " x", ">"))]
    assert_bounded(cases, each=5)


def test_from_peek_survives_nesting() -> None:
    assert HeaderPeek(fields={"from": "(" * 5000}).from_email == ""
    assert HeaderPeek(fields={"from": "a:" * 5000}).from_email == ""
    assert HeaderPeek(fields={"from": "a@" * 4_000 + "b"}).from_email == "a@" * 4_000 + "b"
    assert HeaderPeek(fields={"from": "Lena <lena@example.org>" + " " * 40_000}).from_email == "lena@example.org"


def test_parse_addresses() -> None:
    size = MAX_HEADER_VALUE_CHARS
    assert_bounded(((_label(v), lambda v=v: parse_addresses([v])) for v in runs(SHORT_ADDRESS_ALPHABET, size, ("", "<", ">"))),
                   each=5)


def test_header_peek_of_a_whole_block() -> None:
    blocks = [b"From: " + b"a@" * (MAX_HEADER_BYTES // 2), b"X: y\n" * (MAX_HEADER_BYTES // 5),
              b"X: y\n " * (MAX_HEADER_BYTES // 6), b":" * MAX_HEADER_BYTES, b"\r" * MAX_HEADER_BYTES]
    assert_bounded(((_label(b.decode()), lambda b=b: peek(b + b"\r\n\r\nbody")) for b in blocks), each=5)


# -------------------------------------------------------------- encoded words, params

def test_encoded_words() -> None:
    size = MAX_HEADER_VALUE_CHARS
    shapes = list(runs("=?qQbB_ ä", size, ("", "?=", "?")))
    shapes += ["=?utf-8?q?" * (size // 10), "=?utf-8?b?" + "A" * size, "=?" + "x" * size + "?q?a?=",
               "=?utf-8?q?a?= " * (size // 14), "=?a?q?=?a?q?" * (size // 12)]
    assert_bounded(((_label(v), lambda v=v: decode_header_value(v)) for v in shapes), each=5)


def _message(headers: bytes, body: bytes = b"x\r\n") -> bytes:
    return b"From: g@example.org\r\nTo: s@studio.example\r\nSubject: t\r\nMIME-Version: 1.0\r\n" + headers + b"\r\n" + body


def test_rfc2231_parameters() -> None:
    """RFC 2231 continuations and charsets in a part's filename, as long as a header may be."""
    size = MAX_HEADER_VALUE_CHARS - 200
    params = [
        b"".join(b"; filename*%d*=utf-8''%%C3%%A4" % i for i in range(size // 30)),
        b"; filename*=" + b"utf-8'" * (size // 6),
        b"; filename*0*=utf-8''" + b"%" * size,
        b'; filename="' + b"\\" * size + b'"',
        b'; filename="' + b"=?utf-8?q?a" * (size // 11) + b'"',
        b"; filename*" * (size // 11),
        b";" * size,
    ]
    raws = [_message(b"Content-Type: multipart/mixed; boundary=B\r\n",
                     b"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/pdf\r\n"
                     b"Content-Disposition: attachment" + p + b"\r\n\r\nQUJD\r\n--B--\r\n") for p in params]
    assert_bounded(((_label(r[150:].decode()), lambda r=r: parse(r)) for r in raws), each=10)


# ------------------------------------------------------------------------ subjects

def test_subject_normalisation_and_auto_reply_subjects() -> None:
    """normalize_subject, reply_subject and the auto-reply subject pattern: "re" and 64 KB of
    spaces was split every way between two adjacent "\\s*" (seconds per subject)."""
    size = MAX_HEADER_VALUE_CHARS
    shapes = list(runs("re: []()1aw\t", size, ("", "x", ":")))
    shapes += ["re" + " " * size + "x", "Re[1]" * (size // 5), "re:" * (size // 3) + "auto",
               "[" * size, "[a] " * (size // 4)]

    def all_three(subject: str) -> None:
        normalize_subject(subject)
        reply_subject(subject)
        classify(ParsedMessage(from_=None, subject=subject), "guest@example.org")

    assert_bounded(((_label(s), lambda s=s: all_three(s)) for s in shapes), each=5)


# ------------------------------------------------------------------------ DSN parts

def test_dsn_parts() -> None:
    """A delivery-status part of many recipient blocks and a long tail: read by offset."""
    def report(status: bytes) -> bytes:
        return _message(b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n",
                        b"--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--B\r\n"
                        b"Content-Type: message/delivery-status\r\n\r\n" + status + b"\r\n--B--\r\n")
    tail = 8 * 1024 * 1024
    blocks = b"".join(b"Final-Recipient: rfc822; g%d@example.org\r\nAction: failed\r\n\r\n" % i for i in range(990))
    statuses = [b"Reporting-MTA: dns; mx\r\n\r\n" + blocks + b"X: " + b"x" * tail,
                b"Reporting-MTA: dns; mx\r\n\r\n" + b"Final-Recipient: rfc822; " + b"a@" * (tail // 2),
                b"\r\n" * (tail // 2), b"A: b\r\n\r\n" * (tail // 8)]
    assert_bounded(((_label(s.decode()), lambda s=s: parse(report(s))) for s in statuses), each=30)


# ------------------------------------------------------------------- webhook fields

def test_webhook_fields() -> None:
    """Postmark's JSON fields become header lines (folded by us, or by the stdlib when not
    ASCII): a 40 KB From, Subject or To of each shape."""
    size = 40 * 1024
    alphabet = 'a@<>" ,:(ä'

    def compose(field: str, value: str) -> None:
        payload = {"FromFull": {"Email": "g@example.org", "Name": ""}, "To": "s@studio.example",
                   "TextBody": "hi", field: value}
        if field == "FromName":
            payload = {"From": "g@example.org", "FromName": value, "To": "s@studio.example", "TextBody": "hi"}
        mime_from_postmark(payload)

    cases = [(f"{field} {_label(v)}", lambda f=field, v=v: compose(f, v))
             for field in ("Subject", "To")
             for v in runs(alphabet, size, ("", " ", "x"))]
    assert_bounded(cases, each=5)


# --------------------------------------------------------------- end to end, by webhook

def test_a_40_kb_from_by_webhook_does_not_block_the_event_loop(tmp_path: Path, database_url: str) -> None:
    """The acceptor reads From in its group commit on the event loop, which serves SMTP and
    HTTP: a 40 KB From of "a@" held both for 8.7 s. A GET /healthz sent while the webhook is
    in flight must answer at once."""
    raw = (b"From: " + b"a@" * 20_000 + b"b x\r\nTo: inkwell@mail.test\r\nSubject: lang\r\n\r\nHallo\r\n")
    running = start_gateway(make_settings(tmp_path, database_url, postmark_basic_auth=":".join(p.POSTMARK_AUTH)))
    try:
        studio = running.add_studio("inkwell")
        post = p.postmark_post(p.with_raw_email({"OriginalRecipient": studio.address}, raw))
        answers: list[int] = []

        def deliver() -> None:
            with httpx.Client(base_url=running.base_url, timeout=120) as client:
                answers.append(client.post(post.path, content=post.body, headers=post.headers).status_code)

        webhook = threading.Thread(target=deliver)
        slowest = 0.0
        with httpx.Client(base_url=running.base_url, timeout=120) as client:
            webhook.start()
            while True:
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
                if not webhook.is_alive():
                    break
        webhook.join()
        assert answers == [200]
        assert slowest < 2.0, f"GET /healthz waited {slowest:.1f} s behind the webhook"
    finally:
        running.stop()


def test_webhook_form_fields_and_sendgrid_header_blocks() -> None:
    """The form parser's Content-Disposition and Content-Type readers, and SendGrid's raw
    `headers` block, on runs of their delimiters."""
    size = 8000  # the longest part header line the fast path takes; longer go to the streaming parser

    def form_with(disposition: str) -> None:
        body = (b"--B\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\nx\r\n--B--\r\n")
        with contextlib.suppress(FormError):
            parse_form(body, "multipart/form-data; boundary=B")

    def content_type(value: str) -> None:
        with contextlib.suppress(FormError):
            parse_form(b"", value)

    def sendgrid_headers(block: str) -> None:
        form = Form(fields={"headers": [block.encode()], "from": [b"g@example.org"], "text": [b"hi"]})
        with contextlib.suppress(ComposeError):
            mime_from_sendgrid(form)

    cases: list[Case] = []
    cases += [(f"disposition {_label(v)}", lambda v=v: form_with("form-data; name=" + v))
              for v in runs('";=\\ a*\'', size, ("", '"', ";"))]
    cases += [(f"content-type {_label(v)}", lambda v=v: content_type("multipart/form-data; " + v))
              for v in runs('";=\\ a', 64 * 1024, ("", '"'))]
    cases += [(f"sendgrid headers {_label(v)}", lambda v=v: sendgrid_headers(v))
              for v in runs("a: \r\n\t", 256 * 1024, ("", "x"))]
    assert_bounded(cases, each=5)
