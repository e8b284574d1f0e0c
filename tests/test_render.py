"""gateway.outbound.render: every template, hostile values, locale fallback, and the compiled fast path.

The fast path (MJML compiled once, values filled in) is checked against a full Jinja2 + MJML
render of the same message (``Renderer(precompile=False)``): byte for byte, for every
template and branch, and for generated text.
"""
from __future__ import annotations

import binascii
import email
import email.policy
import re
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.inbound import mime
from gateway.inbound.quotes import split_reply
from gateway.outbound.render import Quoted, Rendered, Renderer, _Compiled, qp_piece

HOSTILE = '<script>alert(1)</script> "&<>'
HOSTILE_HTML = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&lt;&gt;"
SENT = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
LOCALES = ("de", "en")
ACK_PHRASE = {"de": "danke für deine Anfrage", "en": "Thanks for your inquiry"}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture(scope="module")
def reference() -> Renderer:
    return Renderer(precompile=False)


def every_rendering(r: Renderer, studio: str = "Inkwell Tattoo", text: str = "Hallo Lena,\n\nDonnerstag passt.",
                    guest: str = "Lena", quoted_text: str = "Geht Donnerstag?\nLG") -> list[tuple[str, Rendered]]:
    """Each template in each branch: reply without/with quote (author given, author unknown),
    acknowledgement (which names no guest)."""
    out: list[tuple[str, Rendered]] = []
    for loc in LOCALES:
        out += [
            (f"reply.{loc}", r.reply(locale=loc, studio_name=studio, text=text, guest_name=guest)),
            (f"reply.{loc}.quote", r.reply(locale=loc, studio_name=studio, text=text, guest_name=guest,
                                           quoted=Quoted(author=guest, sent_at=SENT, text=quoted_text))),
            (f"reply.{loc}.quote-anonymous", r.reply(locale=loc, studio_name=studio, text=text,
                                                     quoted=Quoted(author="", sent_at=SENT, text=quoted_text))),
            (f"acknowledgement.{loc}", r.acknowledgement(locale=loc, studio_name=studio)),
        ]
    return out


def mime_message(rendered: Rendered) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Inkwell Tattoo <inkwell@mail.test>"
    msg["To"] = "lena@example.de"
    msg["Subject"] = "Re: Anfrage"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg.as_bytes()


# ------------------------------------------------------------------ every template

@pytest.mark.parametrize("case", range(8))
def test_every_template_renders_completely(renderer: Renderer, case: int) -> None:
    name, rendered = every_rendering(renderer)[case]
    for leftover in ("{{", "}}", "{%", "%}", "{#", "#}", "@@gw"):
        assert leftover not in rendered.text, (name, leftover)
        assert leftover not in rendered.html, (name, leftover)
    assert not re.search(r"</?mj-", rendered.html), name
    assert "Inkwell Tattoo" in rendered.text and "Inkwell Tattoo" in rendered.html
    if name.startswith("reply"):
        assert "Hallo Lena,\n\nDonnerstag passt." in rendered.text
        assert "Hallo Lena,<br /><br />Donnerstag passt." in rendered.html
    else:
        locale = name.split(".")[1]
        assert ACK_PHRASE[locale] in rendered.text and ACK_PHRASE[locale] in rendered.html
    assert rendered.text.endswith(".\n") and not rendered.text.endswith("\n\n")
    assert "\n\n\n" not in rendered.text


def test_html_is_a_full_document_without_remote_resources(renderer: Renderer) -> None:
    for name, rendered in every_rendering(renderer):
        html = rendered.html
        assert html.startswith("<!doctype html>") and "<html" in html and html.endswith("</html>\n"), name
        lowered = html.lower()
        for remote in ("<img", "<link", "src=", "url(", "@import", "<script", "background="):
            assert remote not in lowered, (name, remote)
        # The only URL MRML writes is the XHTML namespace, an identifier that is never fetched.
        assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/1999/xhtml"}, name
        assert re.search(r'<html lang="(de|en)"', html), name


def test_reply_layout_text_part(renderer: Renderer) -> None:
    rendered = renderer.reply(locale="de", studio_name="Inkwell Tattoo", text="Hi Lena,\n\nDonnerstag passt.",
                              quoted=Quoted(author="Lena Müller", sent_at=SENT, text="Geht Donnerstag?\n\nLG"))
    assert rendered.text == (
        "Hi Lena,\n\nDonnerstag passt.\n\nInkwell Tattoo\n\n"
        "Am 20.11.2026 um 11:00 schrieb Lena Müller:\n> Geht Donnerstag?\n>\n> LG\n\n"  # Berlin: SENT + 1 h
        "Antworte einfach auf diese E-Mail – deine Nachricht geht direkt an Inkwell Tattoo.\n")
    plain = renderer.reply(locale="en", studio_name="Ink", text="See you!")
    assert plain.text == "See you!\n\nInk\n\nJust reply to this email – your message goes straight to Ink.\n"
    assert "wrote" not in plain.html and "<p style=\"border-top" not in plain.html   # no divider without quote


# ------------------------------------------------------------------ hostile values

@pytest.mark.parametrize("where", ["text", "studio_name", "guest_name", "quoted_text", "quoted_author"])
def test_hostile_values_are_escaped_in_html_and_verbatim_in_text(renderer: Renderer, where: str) -> None:
    values = {"text": "Hallo", "studio_name": "Ink", "guest_name": "Lena", "quoted_text": "Frage",
              "quoted_author": ""}   # empty author: the guest name names the quote's author
    values[where] = HOSTILE
    renderings = [
        renderer.reply(locale=loc, studio_name=values["studio_name"], text=values["text"],
                       guest_name=values["guest_name"],
                       quoted=Quoted(author=values["quoted_author"], sent_at=SENT, text=values["quoted_text"]))
        for loc in LOCALES]
    if where == "studio_name":
        renderings += [renderer.acknowledgement(locale=loc, studio_name=values["studio_name"]) for loc in LOCALES]
    for rendered in renderings:
        assert HOSTILE in rendered.text
        assert HOSTILE_HTML in rendered.html
        assert "<script" not in rendered.html.lower()
        assert '"&<>' not in rendered.html


def test_guest_cannot_inject_template_syntax(renderer: Renderer) -> None:
    rendered = renderer.reply(locale="en", studio_name="{{ studio_name }}", text="{% if x %}{# c #}@@gw:text@@",
                              quoted=Quoted(author="{{ 7*7 }}", sent_at=SENT, text="}}{{"))
    assert "{% if x %}{# c #}@@gw:text@@" in rendered.text and "{{ 7*7 }} wrote:" in rendered.text
    assert "{% if x %}{# c #}@@gw:text@@" in rendered.html and "49" not in rendered.text


# ------------------------------------------------------------------ line breaks and odd characters

def test_line_breaks_are_preserved(renderer: Renderer) -> None:
    text = "eins\nzwei\n\n\ndrei  mit   Abstand\n\tEinzug"
    for crlf in (False, True):
        source = text.replace("\n", "\r\n") if crlf else text
        rendered = renderer.reply(locale="de", studio_name="Ink", text=source,
                                  quoted=Quoted(author="Lena", sent_at=SENT, text=source))
        assert text in rendered.text and "\r" not in rendered.text
        assert "> eins\n> zwei\n>\n>\n> drei  mit   Abstand\n> \tEinzug" in rendered.text
        assert "eins<br />zwei<br /><br /><br />drei  mit   Abstand<br />\tEinzug" in rendered.html
        assert rendered.html.count("eins<br />zwei") == 2


def test_characters_mail_and_mjml_refuse_are_dropped_and_line_separators_become_newlines(
        renderer: Renderer, reference: Renderer) -> None:
    text = "a\x00b\x1bc\u2028d\x85e\x0bf\ud800g\ufffeh\x7fi\r\nj\rk"
    fast = renderer.reply(locale="de", studio_name="In\x00k\nwell", text=text)
    assert fast == reference.reply(locale="de", studio_name="In\x00k\nwell", text=text)
    assert fast.text.startswith("abc\nd\ne\nfghi\nj\nk\n\nInk well\n")
    assert mime.parse(mime_message(fast)).text == fast.text.rstrip("\n")


def test_names_are_one_line(renderer: Renderer) -> None:
    rendered = renderer.reply(locale="en", studio_name="Ink", text="x",
                              quoted=Quoted(author="Lena\r\n  Müller\t", sent_at=SENT, text="y"))
    assert "On Nov 20, 2026, at 11:00\u202fAM, Lena Müller wrote:\n" in rendered.text


# ------------------------------------------------------------------ locales and dates

@pytest.mark.parametrize(("locale", "language"), [
    ("de", "de"), ("en", "en"), ("de-AT", "de"), ("de_CH", "de"), ("en_GB", "en"), ("EN-us", "en"),
    (" en ", "en"), ("fr", "de"), ("fr-FR", "de"), ("", "de"), ("english", "de"), ("x-klingon", "de"),
])
def test_locales_map_to_their_language_and_unknown_ones_fall_back(renderer: Renderer, locale: str,
                                                                  language: str) -> None:
    assert renderer.language(locale) == language
    ack = renderer.acknowledgement(locale=locale, studio_name="Ink")
    assert ack == renderer.acknowledgement(locale=language, studio_name="Ink")
    assert ACK_PHRASE[language] in ack.text
    assert f'<html lang="{language}"' in ack.html


def test_default_locale_is_configurable_and_checked() -> None:
    english_first = Renderer(default_locale="en")
    assert english_first.language("fr") == "en"
    assert Renderer(locales=("de",)).language("en-GB") == "de"
    with pytest.raises(ValueError, match="default_locale"):
        Renderer(default_locale="fr")
    with pytest.raises(ValueError, match="locales"):
        Renderer(locales=("de", "../x"))


def test_quote_line_in_the_studios_time_zone_and_locale(renderer: Renderer) -> None:
    """Issue 13: a German reply said "Am 05.12.2026 um 08:01 schrieb" in UTC; the guest wrote at
    09:01 Berlin time. Dates follow the studio's zone (Europe/Berlin unless set) and its locale's
    CLDR formats (Babel); the words around them are the template's language."""
    vienna = datetime(2026, 11, 20, 11, 0, tzinfo=timezone(timedelta(hours=1)))   # 10:00 UTC
    quoted = Quoted(author="Lena", sent_at=vienna, text="Hallo")
    de = renderer.reply(locale="de", studio_name="Ink", text="x", quoted=quoted)
    assert "Am 20.11.2026 um 11:00 schrieb Lena:\n> Hallo\n" in de.text   # Europe/Berlin by default
    assert "Am 20.11.2026 um 11:00 schrieb Lena:" in de.html
    issue = Quoted(author="", sent_at=datetime(2026, 12, 5, 8, 1, tzinfo=timezone.utc), text="Hallo")
    assert "Am 05.12.2026 um 09:01 schriebst du:\n" in renderer.reply(locale="de", studio_name="I", text="x",
                                                                       quoted=issue).text
    cases = [  # locale, zone, the quote line's date
        ("en", "America/New_York", "On Nov 20, 2026, at 5:00\u202fAM, Lena wrote:"),   # CLDR en = en-US
        ("en-GB", "Europe/London", "On 20 Nov 2026, at 10:00, Lena wrote:"),
        ("de-CH", "Europe/Zurich", "Am 20.11.2026 um 11:00 schrieb Lena:"),
        ("de", "Asia/Tokyo", "Am 20.11.2026 um 19:00 schrieb Lena:"),
        ("fr", "Europe/Paris", "Am 20.11.2026 um 11:00 schrieb Lena:"),   # no French templates: German ones
    ]
    for locale, zone, line in cases:
        rendered = renderer.reply(locale=locale, studio_name="Ink", text="x", quoted=quoted, time_zone=zone)
        assert line + "\n> Hallo\n" in rendered.text, (locale, zone, rendered.text)
    summer = Quoted(author="Lena", sent_at=datetime(2026, 7, 1, 10, 0, tzinfo=timezone.utc), text="Hallo")
    assert "Am 01.07.2026 um 12:00 schrieb" in renderer.reply(locale="de", studio_name="I", text="x",
                                                              quoted=summer).text   # CEST, +2


def test_an_unknown_time_zone_falls_back_to_utc_rather_than_failing(renderer: Renderer) -> None:
    quoted = Quoted(author="Lena", sent_at=datetime(2026, 12, 5, 8, 1, tzinfo=timezone.utc), text="Hallo")
    for zone in ("Nowhere/City", "../../etc/passwd", ""):
        assert "Am 05.12.2026 um 08:01 schrieb" in renderer.reply(locale="de", studio_name="I", text="x",
                                                                  quoted=quoted, time_zone=zone).text


def test_naive_quote_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Quoted(author="Lena", sent_at=datetime(2026, 11, 20, 10, 0), text="Hallo")


def test_our_quote_line_is_cut_by_the_reply_splitter(renderer: Renderer) -> None:
    """A guest who answers below our mail: gateway.inbound.quotes must see our attribution line."""
    for loc in LOCALES:
        for author in ("Lena", ""):
            rendered = renderer.reply(locale=loc, studio_name="Ink", text="Donnerstag passt.",
                                      quoted=Quoted(author=author, sent_at=SENT, text="Geht Donnerstag?"))
            assert split_reply(rendered.text) == "Donnerstag passt.\n\nInk"


# ------------------------------------------------------------------ fast path = full render

def test_fast_path_equals_full_render_for_every_template_and_branch(renderer: Renderer,
                                                                    reference: Renderer) -> None:
    for values in ({}, {"studio": HOSTILE, "text": HOSTILE + "\n\nx", "guest": HOSTILE, "quoted_text": HOSTILE}):
        fast, full = every_rendering(renderer, **values), every_rendering(reference, **values)
        assert [name for name, _ in fast] == [name for name, _ in full]
        for (name, a), (_, b) in zip(fast, full):
            assert a.html == b.html, name
            assert a.text == b.text, name
            assert_qp_is_the_html(a)


def assert_qp_is_the_html(rendered: Rendered) -> None:
    """html_qp (fixed pieces encoded once, values per message) decodes to exactly the HTML and
    keeps RFC 2045's limits: CRLF line ends, at most 76 characters a line, ASCII only."""
    assert rendered.html_qp is not None
    assert binascii.a2b_qp(rendered.html_qp) == rendered.html.replace("\n", "\r\n").encode()
    lines = rendered.html_qp.split(b"\r\n")
    assert lines[-1] == b"" and b"\n" not in rendered.html_qp.replace(b"\r\n", b"")
    assert all(len(line) <= 76 and line.isascii() for line in lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300), quoted_text=st.text(max_size=200), studio=st.text(max_size=40),
       author=st.text(max_size=40), guest=st.text(max_size=40), locale=st.sampled_from(["de", "en-GB", "fr"]),
       quote=st.booleans())
def test_fast_path_equals_full_render_for_any_text(text: str, quoted_text: str, studio: str, author: str,
                                                   guest: str, locale: str, quote: bool) -> None:
    fast, full = _SHARED["fast"], _SHARED["full"]
    quoted = Quoted(author=author, sent_at=SENT, text=quoted_text) if quote else None
    kwargs = dict(locale=locale, studio_name=studio, text=text, guest_name=guest, quoted=quoted)
    reply = fast.reply(**kwargs)
    assert reply == full.reply(**kwargs)
    assert_qp_is_the_html(reply)
    assert fast.acknowledgement(locale=locale, studio_name=studio) == full.acknowledgement(locale=locale,
                                                                                            studio_name=studio)


# hypothesis refuses function-scoped fixtures in @given tests; build the pair once.
_SHARED = {"fast": Renderer(), "full": Renderer(precompile=False)}


def test_a_filter_the_fast_path_cannot_replay_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="cannot replay"):
        _Compiled.from_html("<p>@@GW:TEXT@@</p>", "email/x.de.mjml.j2")   # e.g. {{ text|upper }}
    compiled = _Compiled.from_html("<p>@@gw:text|nl2br@@ {x} @@gw:name@@</p>", "email/x.de.mjml.j2")
    html, html_qp = compiled.fill({"text": "a\n<b>", "name": "&"})
    assert html == "<p>a<br />&lt;b&gt; {x} &amp;</p>"
    assert binascii.a2b_qp(html_qp) == html.encode()


# ------------------------------------------------------------------ as a real email

@pytest.mark.parametrize("case", range(8))
def test_multipart_alternative_parses_back(renderer: Renderer, case: int) -> None:
    name, rendered = every_rendering(renderer, text="Hallo Lena,\n\nDonnerstag passt. " + HOSTILE + " ä€🎉",
                                     quoted_text="Geht Donnerstag?\n" + "lang " * 40)[case]
    raw = mime_message(rendered)

    stdlib = email.message_from_bytes(raw, policy=email.policy.default)
    assert stdlib.get_content_type() == "multipart/alternative"
    plain, html = stdlib.get_body(("plain",)), stdlib.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == rendered.text, name
    assert html.get_content() == rendered.html, name
    assert not stdlib.defects and not plain.defects and not html.defects

    parsed = mime.parse(raw)
    assert parsed.content_type == "multipart/alternative" and not parsed.defects, parsed.defects
    assert parsed.text == rendered.text.rstrip("\n"), name   # gateway.inbound.mime strips the end of every body
    assert parsed.html is not None and "Inkwell Tattoo" in parsed.html


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("link", ["", "https://gateway.example/account/deletion/confirm?code=ABCD-EFGH-IJKL-MNOP"])
def test_account_deletion_fast_path_equals_full_render(renderer: Renderer, reference: Renderer, locale: str,
                                                       link: str) -> None:
    values = dict(locale=locale, studio_name=HOSTILE, studio_address="inkwell@mail.test", code="ABCD-EFGH-IJKL-MNOP",
                  expires_at=SENT + timedelta(hours=48), sender_name="Helpdesk", link=link)
    fast, full = renderer.account_deletion(**values), reference.account_deletion(**values)  # type: ignore[arg-type]
    assert fast == full
    assert_qp_is_the_html(fast)
    assert "ABCD-EFGH-IJKL-MNOP" in fast.text and "ABCD-EFGH-IJKL-MNOP" in fast.html
    assert HOSTILE in fast.text and HOSTILE_HTML in fast.html and "@@gw" not in fast.html
    assert (link in fast.text and f'href="{link}"' in fast.html) if link else "href" not in fast.html
    assert {"de": "22.11.2026 um 11:00 MEZ", "en": "Nov 22, 2026, at 11:00\u202fAM +0100"}[locale] in fast.text


def test_text_templates_are_cut_too_and_filled_without_escaping() -> None:
    compiled = _Compiled.from_text("@@gw:name@@ schrieb:\n@@gw:text|quote@@\n", "email/x.de.txt.j2")
    assert compiled.fill_text({"name": "<Lena & Co>", "text": "a\n\nb"}) == "<Lena & Co> schrieb:\n> a\n>\n> b\n"
    with pytest.raises(ValueError, match="cannot replay"):
        _Compiled.from_text("@@GW:TEXT@@", "email/x.de.txt.j2")   # e.g. {{ text|upper }}


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=st.sampled_from("x =\t\n.é𐀀"), max_size=240))
def test_quoted_printable_pieces_decode_exactly_within_76_characters(value: str) -> None:
    # Around the 76-character limit: the soft break a piece ends with must fit on its line,
    # and must not split an =XX escape.
    encoded = qp_piece(value)
    assert binascii.a2b_qp(encoded) == value.replace("\n", "\r\n").encode()
    assert all(len(line) <= 76 and line.isascii() for line in encoded.split(b"\r\n"))
    assert encoded == b"" or encoded.endswith(b"\r\n")


def test_a_space_before_a_full_lines_end_still_fits_within_76_characters() -> None:
    # binascii encodes the space as "=20" after filling the line: 77 characters (found by the
    # property test above).
    value = "==xxxxxxxxéé𐀀𐀀𐀀𐀀 \n"
    encoded = qp_piece(value)
    assert binascii.a2b_qp(encoded) == value.replace("\n", "\r\n").encode()
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
