"""gateway.inbound.mime: real .eml files by scenario, CPython's corpus, and hostile input."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gateway.inbound import mime
from gateway.inbound.mime import Address, ParsedMessage, body, parse
from gateway.mail.files import sanitise_filename

FIXTURES = Path(__file__).parent / "fixtures" / "eml"
CORPUS = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
    / "test" / "test_email" / "data"
# Messages of CPython's own email test corpus that flanker 0.9.11 rejects (all are
# multipart messages with a missing or wrong boundary).
FLANKER_REJECTS = {"msg_17.txt", "msg_25.txt", "msg_31.txt", "msg_33.txt", "msg_41.txt"}


def load(name: str) -> ParsedMessage:
    return parse((FIXTURES / name).read_bytes())


# ------------------------------------------------------------------ client replies

def test_gmail_reply_de() -> None:
    msg = load("gmail_reply_de.eml")
    assert msg.parser == "flanker"
    assert msg.from_ == Address(email="lena.mueller@gmail.com", name="Lena Müller")
    assert msg.to == [Address(email="hallo@nadelwerk.example", name="Studio Nadelwerk")]
    assert msg.subject == "Re: Terminanfrage für ein Fine-Line Tattoo"
    assert msg.date == datetime(2024, 1, 2, 8, 15, 42, tzinfo=timezone.utc)
    assert msg.message_id == "CAF=abc123+xyz@mail.gmail.com"
    assert msg.in_reply_to == ["studio-1002@ink.example"]
    assert msg.references == ["studio-1001@ink.example", "studio-1002@ink.example"]
    assert msg.content_type == "multipart/alternative"
    assert msg.text.startswith("Hallo zusammen,\n\nDonnerstag um 14 Uhr passt mir gut. Grüße!\n")
    assert msg.html is not None and "Grüße!" in msg.html and 'class="gmail_quote"' not in msg.html
    assert msg.attachments == []
    assert msg.defects == []


def test_outlook_reply_de_latin1_qp() -> None:
    msg = load("outlook_reply_de.eml")
    assert msg.from_ == Address(email="Jonas.Meier@outlook.de", name="Meier, Jonas")
    assert msg.cc == [Address(email="juergen@example.de", name="Jürgen Weiß")]
    assert msg.subject == "AW: Dein Termin am Freitag"
    # Message-ID folded onto its own continuation line, as Exchange writes it.
    assert msg.message_id == "AM0PR10MB1234ABCD@AM0PR10MB1234.EURPRD10.PROD.OUTLOOK.COM"
    assert msg.text.startswith("Hi, Freitag passt leider nicht. Geht auch nächste Woche?\n\nViele Grüße")
    assert msg.header("x-ms-has-attach") == ""
    assert msg.header("Thread-Topic") == "Dein Termin am Freitag"


def test_apple_mail_reply_en() -> None:
    msg = load("apple_mail_reply_en.eml")
    assert msg.from_ == Address(email="sam@icloud.com", name="Sam Taylor")
    assert msg.date == datetime(2024, 1, 2, 2, 30, tzinfo=timezone.utc)
    assert msg.message_id == "5A1B2C3D-1111-2222-3333-444455556666@icloud.com"
    assert msg.text.splitlines()[0] == "Perfect, see you then!"
    assert msg.html is None


def test_thunderbird_reply_de_8bit_and_base64_name() -> None:
    msg = load("thunderbird_reply_de.eml")
    assert msg.from_ == Address(email="joerg@posteo.de", name="Jörg Schäfer")
    assert msg.text.startswith("Die Vorlage gefällt mir sehr!\n\n-- \nJörg Schäfer")


def test_headers_in_order_and_decoded() -> None:
    msg = load("gmail_reply_de.eml")
    names = [name for name, _ in msg.headers]
    assert names[:3] == ["Return-Path", "MIME-Version", "Date"]
    assert msg.header("SUBJECT") == "Re: Terminanfrage für ein Fine-Line Tattoo"
    assert msg.header("References") == "<studio-1001@ink.example> <studio-1002@ink.example>"
    assert all("\r" not in v and "\n" not in v for _, v in msg.headers)


# ------------------------------------------------------------------ charsets

def test_latin1_umlauts_8bit() -> None:
    msg = load("latin1_umlauts.eml")
    assert msg.from_ == Address(email="baerbel@web.de", name="Bärbel König")
    assert msg.subject == "Grüße aus München"
    # Declared ISO-8859-1, written by a Windows client: the dash and the euro sign are
    # CP-1252 bytes (0x96, 0x80).
    assert msg.text == ("Schöne Grüße, ich hätte gern einen Termin für ein Tattoo am "
                        "Oberarm – 150 € sind ok.")


def test_base64_utf8_body_and_subject() -> None:
    msg = load("base64_utf8_umlauts.eml")
    assert msg.subject == "Übergröße"
    assert msg.text == "Größe: etwa 10 cm, Motiv: Blüte."


def test_unknown_and_oddly_spelled_charsets_fall_back_to_utf8() -> None:
    msg = load("unknown_charset.eml")
    assert msg.subject == "Tür"
    assert msg.from_ == Address(email="j@example.de", name="Jürgen")
    # x-unknown (QP) and "UTF8" (8bit) parts, siblings in multipart/mixed.
    assert msg.text == "Für nächste Woche.\nMit freundlichen Grüßen"


def test_us_ascii_label_on_cp1252_text() -> None:
    msg = load("cp1252_mislabeled.eml")
    assert msg.text == "„Kostet das 200 €?“ – fragt Max."


def test_raw_utf8_header_rfc6532() -> None:
    raw = "From: Zoë Weiß <zoe@Example.DE>\r\nSubject: Größe für Tattoo\r\n\r\nhi\r\n".encode()
    msg = parse(raw)
    assert msg.subject == "Größe für Tattoo"
    assert msg.from_ == Address(email="zoe@example.de", name="Zoë Weiß")


def test_decode_bytes_chain() -> None:
    # The declared charset wins, even when it is wrong (ISO-8859-1 read as CP-1252).
    assert mime.decode_bytes("Grüße".encode("utf-8"), "iso-8859-1") == "GrÃ¼ÃŸe"
    assert mime.decode_bytes("Grüße".encode("utf-8"), "x-unknown") == "Grüße"
    assert mime.decode_bytes("Grüße".encode("cp1252"), "utf-8") == "Grüße"
    assert mime.decode_bytes(b"\x81\x8d", None) == "\x81\x8d"  # undefined in CP-1252
    assert mime.decode_bytes(b"abc", "zlib") == "abc"          # not a text codec


def test_split_multibyte_encoded_words_are_joined() -> None:
    # "ü" is C3 BC; some encoders put C3 and BC into different encoded-words.
    assert mime.decode_header_value("=?utf-8?q?M=C3?= =?utf-8?q?=BCller?=") == "Müller"
    assert mime.decode_header_value("=?utf-8?b?R3LDvMOfZQ?=") == "Grüße"  # no padding
    assert mime.decode_header_value("Re:\r\n =?iso-8859-1?q?T=FCr?= zu") == "Re: Tür zu"


# ------------------------------------------------------------------ attachments

def test_rfc2231_filenames_and_sanitising() -> None:
    msg = load("rfc2231_filename.eml")
    assert msg.text == "Siehe Anhang."
    pdf, jpg, exe = msg.attachments
    # RFC 2231 continuations in UTF-8 win over the ISO-8859-1 name= parameter.
    assert pdf.filename == "Entwürfe für München.pdf"
    assert pdf.content_type == "application/pdf"
    assert pdf.data.startswith(b"%PDF-1.4\n")
    assert pdf.inline is False
    # RFC 2047 inside a quoted filename, with a path in front of it.
    assert jpg.filename == "Rücken.jpg"
    assert jpg.data.startswith(b"\xff\xd8\xff\xe0")
    # Windows path, a control character and U+202E RIGHT-TO-LEFT OVERRIDE removed.
    assert exe.filename == "invoicegpj.exe"
    assert exe.data == b"MZ\x90\x00"
    assert len(pdf.sha256) == 64 and pdf.size == len(pdf.data)


def test_inline_image_in_multipart_related() -> None:
    msg = load("inline_image.eml")
    assert msg.text == "So ungefähr soll es aussehen: [Bild]"
    assert msg.html == '<p>So ungefähr soll es aussehen: <img src="cid:ii_lq1abc"></p>' \
        or msg.html == "<p>So ungefähr soll es aussehen: <img></p>"
    (image,) = msg.attachments
    assert image.filename == "attachment-1.png"
    assert image.content_type == "image/png"
    assert image.inline is True
    assert image.content_id == "ii_lq1abc"
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_apple_mail_text_image_text_keeps_both_texts() -> None:
    msg = load("apple_mail_text_image_text.eml")
    assert msg.text == "Here is the first idea:\nAnd the second one in words: a small fox."
    (image,) = msg.attachments
    assert (image.filename, image.inline) == ("idea.png", True)


def test_attachment_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body, "MAX_ATTACHMENTS", 3)   # patched where it is read
    monkeypatch.setattr(body, "MAX_ATTACHMENT_BYTES", 1000)
    parts = [b"--B\r\nContent-Type: application/octet-stream\r\n"
             b"Content-Disposition: attachment; filename=f%d.bin\r\n\r\nxx\r\n" % i for i in range(5)]
    big = (b"--B\r\nContent-Type: image/jpeg\r\nContent-Disposition: attachment; filename=big.jpg\r\n"
           b"\r\n" + b"x" * 2000 + b"\r\n")
    raw = (b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + big + b"".join(parts) + b"--B--\r\n")
    msg = parse(raw)
    assert [a.filename for a in msg.attachments] == ["f0.bin", "f1.bin", "f2.bin"]
    assert "attachment 'big.jpg' larger than 1000 bytes; dropped" in msg.defects
    assert "more than 3 attachments; the rest dropped" in msg.defects


def test_sanitise_filename_fallbacks() -> None:
    assert sanitise_filename("", "image/jpeg", 2) == "attachment-2.jpg"
    assert sanitise_filename("../..", "application/x-unknown-thing", 1) == "attachment-1.bin"
    assert sanitise_filename("a/b\\c.txt", "text/plain", 1) == "c.txt"
    long_name = "x" * 400 + ".jpeg"
    assert sanitise_filename(long_name, "image/jpeg", 1) == "x" * 250 + ".jpeg"


# ------------------------------------------------------------------ HTML

def test_html_only_is_converted_and_sanitised() -> None:
    msg = load("html_only.eml")
    assert msg.text == "Hallo Studio,\n\nhier ist mein Motiv & meine Idee: Rose.\nGrüße\n\nklick"
    assert msg.html is not None
    assert "script" not in msg.html and "alert" not in msg.html
    assert "onload" not in msg.html and "onerror" not in msg.html
    assert "javascript:" not in msg.html
    assert "Ignored title" not in msg.html and "color: red" not in msg.html
    assert '<a href="https://example.com/motiv" rel="noopener noreferrer">Motiv</a>' in msg.html


def test_html_to_text_pre_and_lists() -> None:
    assert mime.html_to_text("<ul><li>eins</li><li>zwei</li></ul><pre>a\n  b</pre>") == \
        "eins\nzwei\n\na\n  b"


# ------------------------------------------------------------------ DSN

def test_dsn_bounce_rfc822_headers() -> None:
    msg = load("dsn_bounce.eml")
    assert msg.content_type == "multipart/report"
    assert msg.dsn_original_message_ids == ["studio-5001@ink.example"]
    # The "delayed" recipient is not a failure (RFC 3464 section 2.3.3).
    assert msg.dsn_failed_recipients == ["guest@gone.example"]
    assert msg.text.startswith("This is the mail system at host mx.ink.example.")
    assert msg.attachments == []


def test_dsn_bounce_with_full_original_message() -> None:
    msg = load("dsn_bounce_rfc822.eml")
    assert msg.dsn_original_message_ids == ["studio-6001@ink.example"]
    assert msg.dsn_failed_recipients == ["nobody@example.net"]
    assert msg.text == "Delivery failed."
    (original,) = msg.attachments
    assert original.content_type == "message/rfc822"
    assert original.filename == "attachment-1.eml"
    assert b"Body of the original." in original.data


# ------------------------------------------------------------------ ids and dates

def test_no_message_id_and_bad_date() -> None:
    msg = load("no_message_id.eml")
    assert msg.message_id is None
    assert msg.date is None
    assert msg.from_ == Address(email="someone@example.com", name="")
    assert msg.text == "body without id"


def test_ids_without_brackets() -> None:
    msg = load("mobile_footer_en.eml")
    assert msg.in_reply_to == ["studio-7001@ink.example"]
    assert msg.references == ["studio-7000@ink.example", "studio-7001@ink.example"]


def test_message_id_tolerance() -> None:
    assert mime.parse_message_ids("< abc@x.y >") == ["abc@x.y"]
    assert mime.parse_message_ids("<a@b> (Hans's message of Mon)") == ["a@b"]
    assert mime.parse_message_ids("<a@b><c@d>  <a@b>") == ["a@b", "c@d"]
    assert mime.parse_message_ids("lonely-id-without-at") == ["lonely-id-without-at"]


def test_references_capped_keeps_root_and_newest() -> None:
    refs = " ".join(f"<r{i}@x>" for i in range(300))
    msg = parse(f"From: a@b.c\r\nReferences: {refs}\r\n\r\nx".encode())
    assert len(msg.references) == 100
    assert msg.references[0] == "r0@x" and msg.references[1] == "r201@x"
    assert msg.references[-1] == "r299@x"


def test_date_without_zone_is_utc() -> None:
    msg = parse(b"Date: Mon, 1 Jan 2024 10:00:00 -0000\r\n\r\nx")
    assert msg.date == datetime(2024, 1, 1, 10, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------ corpus

def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("msg_*.txt"))


def test_cpython_corpus_never_raises() -> None:
    files = corpus_files()
    assert len(files) > 40, f"CPython email corpus not found at {CORPUS}"
    fell_back = set()
    stdlib_defects = set()
    for path in files:
        msg = parse(path.read_bytes())
        assert isinstance(msg, ParsedMessage), path.name
        assert msg.parser in ("flanker", "stdlib"), (path.name, msg.defects)
        if msg.parser == "stdlib":
            fell_back.add(path.name)
            assert any(d.startswith("flanker: ") for d in msg.defects), path.name
            if any(d.startswith("stdlib: ") for d in msg.defects):
                stdlib_defects.add(path.name)
    assert fell_back == FLANKER_REJECTS
    # msg_33 is a multipart/mixed whose body has no boundary at all; the stdlib reads it
    # as an empty multipart without complaint. The others carry stdlib's own defects.
    assert stdlib_defects == FLANKER_REJECTS - {"msg_33.txt"}


def test_flanker_rejects_corpus_message_with_boundary_error() -> None:
    msg = parse((CORPUS / "msg_25.txt").read_bytes())
    assert msg.parser == "stdlib"
    assert "flanker: DecodingError: Multipart message without boundary" in msg.defects


# ------------------------------------------------------------------ hostile input

def test_nesting_a_thousand_deep() -> None:
    head = b"From: a@b.c\r\nSubject: deep\r\n"
    opens = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                     for i in range(1000))
    closes = b"".join(b"--b%d--\r\n" % i for i in reversed(range(1000)))
    msg = parse(head + opens + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closes)
    assert msg.parser == "headers-only"
    assert msg.subject == "deep"
    assert any("nesting bomb" in d for d in msg.defects)


def test_nesting_past_the_depth_limit_is_cut() -> None:
    depth = mime.MAX_DEPTH + 20
    opens = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                     for i in range(depth))
    closes = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    msg = parse(b"From: a@b.c\r\n" + opens + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closes)
    assert msg.parser in ("flanker", "stdlib")
    assert f"MIME nesting deeper than {mime.MAX_DEPTH}; deeper parts ignored" in msg.defects
    assert msg.text == ""


def test_twenty_thousand_parts() -> None:
    parts = b"".join(b"--X\r\nContent-Type: application/octet-stream\r\n\r\npart %d\r\n" % i
                     for i in range(20_000))
    msg = parse(b'From: a@b.c\r\nContent-Type: multipart/mixed; boundary="X"\r\n\r\n' + parts + b"--X--\r\n")
    assert msg.parser == "stdlib"
    assert f"more than {mime.MAX_PARTS} MIME parts; the rest are ignored" in msg.defects
    assert len(msg.attachments) == mime.MAX_ATTACHMENTS


def test_two_thousand_parts_through_flanker() -> None:
    parts = b"".join(b"--X\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(2_000))
    msg = parse(b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n' + parts + b"--X--\r\n")
    assert msg.parser == "flanker"
    assert f"more than {mime.MAX_PARTS} MIME parts; the rest are ignored" in msg.defects
    assert msg.text.startswith("part 0\npart 1\n")


def test_ten_megabyte_single_line() -> None:
    msg = parse(b"From: a@b.c\r\nSubject: long\r\n\r\n" + b"A" * (10 * 1024 * 1024))
    assert msg.parser == "flanker"
    assert msg.subject == "long"
    assert len(msg.text) == mime.MAX_TEXT_CHARS
    assert f"text longer than {mime.MAX_TEXT_CHARS} chars; truncated" in msg.defects


def test_ten_megabyte_header_value() -> None:
    msg = parse(b"From: a@b.c\r\nSubject: " + b"B" * (10 * 1024 * 1024) + b"\r\n\r\nbody")
    assert len(msg.subject) == mime.MAX_HEADER_VALUE_CHARS
    assert any(d.startswith("header Subject longer than") for d in msg.defects)
    assert msg.text == "body"


def test_fifty_thousand_header_lines() -> None:
    flood = b"".join(b"X-H%d: v\r\n" % i for i in range(50_000))
    msg = parse(flood + b"From: Flood <a@b.c>\r\nSubject: flood\r\n\r\nbody\r\n")
    assert len(msg.headers) == mime.MAX_HEADERS
    assert f"50002 top-level headers; kept the first {mime.MAX_HEADERS}" in msg.defects
    # Fields after the cap are still read.
    assert msg.from_ == Address(email="a@b.c", name="Flood")
    assert msg.subject == "flood"
    assert msg.text == "body"


def test_random_binary() -> None:
    rng = random.Random(1234)
    for size in (0, 1, 100, 100_000, 1_000_000):
        msg = parse(rng.randbytes(size))
        assert isinstance(msg, ParsedMessage)
        assert msg.parser in ("flanker", "stdlib", "headers-only")


def test_non_bytes_input_does_not_raise() -> None:
    assert parse("From: a@b.c\r\n\r\nhi".encode()).text == "hi"
    assert isinstance(parse(None), ParsedMessage)  # type: ignore[arg-type]


def test_import_is_silent() -> None:
    """flanker's import noise (DeprecationWarnings, ply table messages) stays inside."""
    env = dict(os.environ, PYTHONWARNINGS="error::DeprecationWarning")
    done = subprocess.run(
        [sys.executable, "-c", "import gateway.inbound.mime, ply.yacc; print(ply.yacc.yacc.__name__)"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == "yacc"  # the write_tables patch was undone
