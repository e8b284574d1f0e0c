"""Email bodies for studio replies, inquiry acknowledgements and account-deletion confirmations:
Jinja2, with MJML for HTML.

CONTRACT (the outbox relies on it):
    Renderer().reply(locale=..., studio_name=..., text=..., guest_name=..., quoted=...) -> Rendered
    Renderer().acknowledgement(locale=..., studio_name=...) -> Rendered
    Renderer().account_deletion(locale=..., studio_name=..., studio_address=..., code=...,
                                expires_at=..., sender_name=..., link=...) -> Rendered
    ``Rendered.text`` is the text/plain body, ``Rendered.html`` a complete HTML document.

Templates live in ``templates/email/<kind>.<locale>.{txt,mjml}.j2`` and ship as the
``gateway.templates`` package data (see pyproject.toml).

Why the HTML is compiled once and then only filled in
-----------------------------------------------------
The outbound worker has to send more than 1,000 messages a second, so one rendering must
cost well under 0.2 ms. Running Jinja2 and then MJML for every message spends most of its
time in MRML (the Rust MJML compiler behind ``mjml2html``), for nothing: MJML only decides
layout, and the layout of a message does not depend on the values in it, so at construction we:

1. render each ``.mjml.j2`` template with Jinja2, giving every variable a sentinel string
   such as ``@@gw:text@@`` instead of a value. Our HTML filters append their name to a
   sentinel (``{{ text|nl2br }}`` gives ``@@gw:text|nl2br@@``), so the sentinel records
   what the template does to the value;
2. compile the result with MRML once. Sentinels are plain text to MRML and come out
   untouched, in the same place as a real value would;
3. cut the HTML at the sentinels into a tuple of fixed pieces.

Per message we escape each value, apply the recorded filters, and join the pieces: the
same bytes a full Jinja2 + MJML render would produce (tests/test_render.py compares the two
for every template, every branch, and generated text). The text part needs no MJML; it is
cut at sentinels the same way (without escaping, with ``_TEXT_FILTERS``), since a Jinja2
render per message cost more than the outbox can spend. What the fast path needs from
templates (HTML and text alike):

* ``if`` only on the variables listed as flags in ``_KINDS``. Each combination of flags is
  compiled separately (2-4 variants per template); a branch on any other variable would be
  frozen at compile time. Loops over values are impossible for the same reason, which is
  why message text becomes HTML through the ``nl2br`` filter and not through a loop.
* Only the filters in ``_HTML_FILTERS`` (``_TEXT_FILTERS`` in text templates) on values. Any
  other filter changes the sentinel, which construction detects ("@@gw" left in the output)
  and refuses.
* No values inside ``<mj-title>``: MRML copies the title into an ``aria-label`` with Rust
  debug escaping (a newline comes out as a backslash and an "n"), so it would not even
  match a full render.

Values are cleaned before either part sees them (Unicode line breaks to "\\n", control
characters, lone surrogates and noncharacters dropped: MRML refuses XML-invalid characters
and ``EmailMessage.set_content`` splits lines at every character ``str.splitlines`` knows).

Measured (CPython 3.11, x86-64, one core; timeit, 20,000 calls, a 600-character
message quoting a 300-character one, best of three): ``reply`` 20 µs per message (text part
7 µs, HTML fill 6 µs, the rest cleaning, date and call overhead), ``acknowledgement`` 9 µs;
a full Jinja2 + MJML render of the same reply costs 69 µs, 41 µs of it in MRML. Building a
Renderer compiles the 12 HTML variants of two locales in about 8 ms.

Why not the plain way (issue 12: keep this only if it is worth more than 10 % of the outbox
rate). The plain way was built and measured: each ``.mjml.j2`` compiled by MRML once with its
Jinja tags left in (tags between MJML elements wrapped in ``<mj-raw>``), the HTML that comes
out rendered by Jinja2 per message with autoescape, the text part by Jinja2 too. It gave the
same bytes as this path for 7,200 renderings (every template, branch and locale; hostile and
random values) and 203 fewer lines here, but the outbox then has to quoted-printable the whole
5.8 KB document per message (binascii: 43-62 µs, holding the GIL the event loop sends with),
where ``html_qp`` encodes only the values; the two Jinja renders cost 26 µs against this
path's 20 (the bench's reply, same timeit run).
``bench/outbound.py``'s outbound section (3,000 replies, 4 connections, smtp-sink), 7 rounds
each, alternating, in one session on a shared 2-core machine, outbox msg/s (share of the
plain aiosmtplib loop reusing connections, measured in the same run):

    this path     2585 2615 2687 2137 2099 2322 2602   median 2585 (67 % of the loop; 64-78 %)
    plain Jinja2  1963 2174 2106 1777 1877 1920 2109   median 1963 (55 % of the loop; 46-60 %)

So this path sends 32 % more (the plain way 24 % less; every round's share above every round
of the other), and the plain way's median misses the outbox's 60 % target. That is also why
this module is about 500 lines, over the ~400 a module should have: the pre-fill machinery
is the price of that third of the outbox rate. Sending the HTML
as base64 instead (22 µs, but 22 % more bytes) did not close the gap: 1833 1072 1810 msg/s
against 2155 2625 2496 in three more alternating rounds.

Times in the quote line are shown in the studio's time zone and its locale's formats
(gateway/outbound/dates.py); the caller passes the zone (studio.time_zone).
"""
from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import jinja2
from markupsafe import Markup, escape
from mjml import mjml2html

from gateway.outbound.dates import DEFAULT_TIME_ZONE, local_date

__all__ = ["Quoted", "Rendered", "Renderer", "shared_renderer"]


@dataclass(frozen=True)
class Quoted:
    """The guest's previous message, quoted under a studio's reply."""

    author: str          # display name or address of the guest
    sent_at: datetime    # aware
    text: str

    def __post_init__(self) -> None:
        # A naive time would silently be shown as UTC although it may be local time;
        # models.py keeps every time aware, so a naive one here is a caller's bug.
        if self.sent_at.tzinfo is None or self.sent_at.utcoffset() is None:
            raise ValueError("Quoted.sent_at must be timezone-aware")


@dataclass(frozen=True)
class Rendered:
    """Both bodies of one email, ready for EmailMessage.set_content / add_alternative."""

    text: str            # the text/plain body, ending with one newline
    html: str            # the text/html body, a complete document ending with one newline
    # `html` quoted-printable with CRLF line ends, when the fast path made it (see qp_piece):
    # the outbox sends it as is instead of encoding 8 KB of HTML per message.
    html_qp: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Kind:
    """The variables one kind of email passes to its templates."""

    defaults: Mapping[str, str | bool]   # every variable, with its value when absent
    flags: tuple[str, ...]               # the only variables templates may branch on

    def __post_init__(self) -> None:
        stray = [name for name, v in self.defaults.items() if isinstance(v, bool) and name not in self.flags]
        if stray:   # it would be compiled as an always-true sentinel
            raise ValueError(f"boolean template variables must be flags: {stray}")


_KINDS: Mapping[str, _Kind] = {
    "reply": _Kind(
        defaults={"studio_name": "", "text": "", "quote": False, "quote_author": "",
                  "quote_date": "", "quote_text": ""},
        # quote_author is a flag so that an unknown author reads "you wrote", not "  wrote".
        flags=("quote", "quote_author"),
    ),
    # Names no guest: an acknowledgement must not mail a sender's own words back out.
    "acknowledgement": _Kind(defaults={"studio_name": ""}, flags=()),
    # The link to the confirmation page exists only when GATEWAY_PUBLIC_URL is set.
    "account_deletion": _Kind(
        defaults={"studio_name": "", "studio_address": "", "code": "", "expires": "", "sender_name": "",
                  "link": ""},
        flags=("link",),
    ),
    # A one-time sign-in link to the web messenger (gateway/lifecycle/login_mail.py).
    "login_link": _Kind(defaults={"studio_name": "", "link": "", "expires": "", "sender_name": ""}, flags=()),
    # A guest's new message told to a profile, and the hourly digest (gateway/outbound/notifications.py).
    "notification": _Kind(defaults={"studio_name": "", "guest_name": "", "text": "", "files": "", "link": ""},
                          flags=("files",)),
    "notification_digest": _Kind(defaults={"studio_name": "", "items": ""}, flags=()),
}

# ---------------------------------------------------------------------- value cleaning

# C0/C1 controls (tab and newline are kept), lone surrogates and the noncharacters
# U+FFFE/U+FFFF: MRML rejects them ("unable to parse next template"), they are invalid
# in HTML, and a lone surrogate cannot even be encoded to UTF-8 for sending.
_UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _clean_text(value: str) -> str:
    """Message text with "\\n" line ends only and no characters mail or MRML chokes on.

    ``str.splitlines`` also splits at \\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and U+2029, and
    so does the email package when it encodes a body: normalising them here keeps the
    text/plain part identical after a trip through MIME.
    """
    return _UNSAFE_CHARS.sub("", "\n".join(value.splitlines())).strip()


def _clean_line(value: str) -> str:
    """A name for a one-line context ("Am ... schrieb <name>:"): whitespace runs to one space."""
    return " ".join(_UNSAFE_CHARS.sub("", value).split())


# ---------------------------------------------------------------------- dates

# In the studio's time zone and its locale's formats: gateway/outbound/dates.py.

# ---------------------------------------------------------------------- filters and sentinels

_SENTINEL = re.compile(r"@@gw:([a-z_]+)((?:\|[a-z0-9_]+)*)@@")


class _Slot(str):
    """A variable's stand-in while an HTML template is compiled (see the module docstring)."""


def _nl2br(value: str) -> Markup:
    """Escape, then replace each newline with ``<br />``.

    ``<br />`` because MRML rewrites ``<br>`` to it; no newline after it because MRML drops a
    text node made only of newlines between two elements ("<br />\\n<br />" comes out as
    "<br /><br />"), which a filled-in value would not match.
    """
    return Markup(str(escape(value)).replace("\n", "<br />"))


_HTML_FILTERS: Mapping[str, Callable[[str], Markup]] = {"nl2br": _nl2br}


def _slot_aware(name: str, apply: Callable[[str], str]) -> Callable[[str], str]:
    """A Jinja filter that records itself on a sentinel and filters real values."""
    def jinja_filter(value: str) -> str:
        if isinstance(value, _Slot):
            return _Slot(f"{value[:-2]}|{name}@@")
        return apply(value)
    return jinja_filter


def _quote_text(value: str) -> str:
    """Prefix each line with "> " (">" for empty ones), as mail clients quote plain text."""
    return "\n".join(f"> {line}" if line else ">" for line in value.split("\n"))


_TEXT_FILTERS: Mapping[str, Callable[[str], str]] = {"quote": _quote_text}


def qp_piece(value: str) -> bytes:
    """`value` quoted-printable (RFC 2045 6.7) with CRLF line ends, ending at a line start.

    A piece that ends mid-line gets a soft line break ("=" CRLF), which decoders remove, so
    pieces encoded separately concatenate into a valid encoding of the concatenated text:
    the fixed HTML of a template is encoded once, and per message only the values are.
    binascii does the work in C (soft breaks keep lines within 76 characters).
    """
    if not value:
        return b""
    encoded = binascii.b2a_qp(value.replace("\r\n", "\n").encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    lines = encoded.split(b"\r\n")
    if encoded.endswith(b"\r\n"):
        lines.pop()           # the empty rest after the last line end
    else:
        lines[-1] += b"="     # a soft break: the next piece goes on with this line
    if all(len(line) <= 76 for line in lines):
        return b"\r\n".join(lines) + b"\r\n"
    return b"\r\n".join(piece for line in lines for piece in _within_76(line)) + b"\r\n"


def _within_76(line: bytes) -> list[bytes]:
    """One encoded line cut by soft breaks into lines of at most 76 characters, never inside an
    =XX escape (any "=" but a final soft break starts one). binascii fills lines up to 76
    itself, but not always: a space or tab before a line end becomes "=20" after the line is
    full (77 characters), and the soft break that ends a piece needs one more."""
    pieces = []
    while len(line) > 76:
        cut = 75
        if line[cut - 1:cut] == b"=":
            cut -= 1
        elif line[cut - 2:cut - 1] == b"=":
            cut -= 2
        pieces.append(line[:cut] + b"=")
        line = line[cut:]
    pieces.append(line)
    return pieces


def _mjml(source: str) -> str:
    # fonts={}: MRML's default font table adds a Google Fonts <link> and @import as soon as
    # the font stack names Roboto (ours does, as a system font). Mail clients block remote
    # CSS and it would tell Google who opened the mail.
    # The newline: set_content adds one to a body without it, and a body that comes back
    # from MIME exactly as it went in is easier to reason about.
    return mjml2html(source, disable_comments=True, fonts={}) + "\n"


@dataclass(frozen=True)
class _Compiled:
    """One HTML variant: MRML's output cut at the sentinels, and what fills each cut.

    Joining the pieces is several times faster than ``str.format`` on the same pattern,
    which re-parses the whole 8 KB document on every call.
    """

    literals: tuple[str, ...]                        # len(holes) + 1 pieces of fixed HTML
    holes: tuple[int, ...]                           # per gap between literals: index into slots
    slots: tuple[tuple[str, tuple[str, ...]], ...]   # (variable, filters), each computed once
    qp_literals: tuple[bytes, ...] = ()              # the literals through qp_piece

    @classmethod
    def from_html(cls, html: str, template: str) -> _Compiled:
        return cls._cut(html, template, _HTML_FILTERS, " or into <mj-title>")

    @classmethod
    def from_text(cls, text: str, template: str) -> _Compiled:
        """A text/plain template rendered with sentinels: filled with fill_text, no escaping."""
        return cls._cut(text, template, _TEXT_FILTERS, "")

    @classmethod
    def _cut(cls, output: str, template: str, allowed: Mapping[str, object], where: str) -> _Compiled:
        pieces = _SENTINEL.split(output)   # literal, name, filters, literal, name, filters, ...
        literals = pieces[0::3]
        for literal in literals:
            if "@@gw" in literal.lower():
                raise ValueError(f"{template}: a value went through a filter the renderer cannot "
                                 f"replay (allowed: {', '.join(allowed)}){where}")
        slots: list[tuple[str, tuple[str, ...]]] = []
        holes: list[int] = []
        for name, filters in zip(pieces[1::3], pieces[2::3]):
            key = (name, tuple(filters.split("|")[1:]))
            if key not in slots:
                slots.append(key)
            holes.append(slots.index(key))
        return cls(literals=tuple(literals), holes=tuple(holes), slots=tuple(slots),
                   qp_literals=tuple(qp_piece(literal) for literal in literals))

    def fill(self, context: Mapping[str, str | bool]) -> tuple[str, bytes]:
        """The HTML, and the same HTML quoted-printable (fixed pieces encoded at compile time)."""
        values: list[str] = []
        for name, filters in self.slots:
            value: str = str(context[name])
            for f in filters:
                value = _HTML_FILTERS[f](value)
            # escape: a no-op on a filter's Markup, as in Jinja. Then a plain str: Markup's methods
            # (the replace in qp_piece) escape their arguments on every call.
            values.append(str(escape(value)))
        encoded = [qp_piece(value) for value in values]
        out, qp = [self.literals[0]], [self.qp_literals[0]]
        for hole, literal, qp_literal in zip(self.holes, self.literals[1:], self.qp_literals[1:]):
            out += (values[hole], literal)
            qp += (encoded[hole], qp_literal)
        return "".join(out), b"".join(qp)

    def fill_text(self, context: Mapping[str, str | bool]) -> str:
        """The text part: values as they are (autoescape is off for text), through their filters."""
        values: list[str] = []
        for name, filters in self.slots:
            value = str(context[name])
            for f in filters:
                value = _TEXT_FILTERS[f](value)
            values.append(value)
        out = [self.literals[0]]
        for hole, literal in zip(self.holes, self.literals[1:]):
            out += (values[hole], literal)
        return "".join(out)


# ---------------------------------------------------------------------- templates

_LOCALE = re.compile(r"[a-z]{2,3}")


def _template_root() -> Traversable:
    """The folder holding ``email/``, from an installed wheel or from a source checkout.

    A wheel (and a zip import) has ``gateway/templates/`` as a namespace package, found by
    ``importlib.resources``. In a setuptools editable install (``make test``) that import
    fails: the editable finder does not resolve a package_dir-mapped namespace package inside
    a regular package (pypa/setuptools#4943), so we read the repository's ``templates/``.
    """
    try:
        return resources.files("gateway.templates")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "templates"


def _load_templates(locales: tuple[str, ...]) -> dict[str, str]:
    """Every template the renderer needs, read once: a missing one fails at start, not at send."""
    root = _template_root() / "email"
    sources: dict[str, str] = {}
    for kind, locale, part in itertools.product(_KINDS, locales, ("txt", "mjml")):
        name = f"{kind}.{locale}.{part}.j2"
        sources[f"email/{name}"] = (root / name).read_text(encoding="utf-8")
    return sources


@lru_cache(maxsize=1)
def shared_renderer() -> Renderer:
    """One Renderer per process for code that renders outside the outbox (its templates are
    compiled once, a few milliseconds, on first use)."""
    return Renderer()


class Renderer:
    """Renders both bodies of the emails the gateway sends; build one per process and share it.

    Construction reads and compiles every template (a few milliseconds); rendering is then
    thread-safe: it only reads the compiled variants and Jinja's compiled text templates.
    ``precompile=False`` runs Jinja2 and MJML for every message instead: the reference the
    tests compare the fast path with, and handy while editing a template.
    """

    def __init__(self, locales: tuple[str, ...] = ("de", "en"), default_locale: str = "de", *,
                 precompile: bool = True) -> None:
        if not locales or any(not _LOCALE.fullmatch(loc) for loc in locales):
            raise ValueError(f"locales must be lower-case language codes like 'de', got {locales!r}")
        if default_locale not in locales:
            raise ValueError(f"default_locale {default_locale!r} is not one of {locales!r}")
        self._locales = frozenset(locales)
        self._default = default_locale
        loader = jinja2.DictLoader(_load_templates(locales))
        # StrictUndefined: a misspelt variable fails loudly instead of vanishing from a mail.
        self._html_env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
        self._html_env.filters.update({name: _slot_aware(name, f) for name, f in _HTML_FILTERS.items()})
        self._text_env = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                                            trim_blocks=True, keep_trailing_newline=True)
        self._text_env.filters.update({name: _slot_aware(name, f) for name, f in _TEXT_FILTERS.items()})
        self._text = {(kind, loc): self._text_env.get_template(f"email/{kind}.{loc}.txt.j2")
                      for kind in _KINDS for loc in locales}
        self._compiled: dict[tuple[str, str], dict[tuple[bool, ...], _Compiled]] | None = None
        self._compiled_text: dict[tuple[str, str], dict[tuple[bool, ...], _Compiled]] = {}
        if precompile:
            self._compiled = {(kind, loc): self._compile(kind, loc) for kind in _KINDS for loc in locales}
            self._compiled_text = {(kind, loc): self._compile_text(kind, loc) for kind in _KINDS for loc in locales}

    def language(self, locale: str) -> str:
        """The template language for a locale: "de-AT" and "de_DE" give "de"; unknown, the default."""
        language = locale.strip().replace("_", "-").split("-", 1)[0].lower()
        return language if language in self._locales else self._default

    def reply(self, *, locale: str, studio_name: str, text: str, guest_name: str = "",
              quoted: Quoted | None = None, time_zone: str = DEFAULT_TIME_ZONE) -> Rendered:
        """A studio's message to a guest, signed with the studio's name, over the guest's last message.

        ``guest_name`` names the quote's author when ``quoted.author`` is empty; with neither,
        the quote line reads "you wrote". Its date is in ``time_zone`` (the studio's), formatted
        for ``locale``.
        """
        language = self.language(locale)
        context: dict[str, str | bool] = {
            **_KINDS["reply"].defaults,
            "studio_name": _clean_line(studio_name),
            "text": _clean_text(text),
        }
        if quoted is not None:
            context.update(
                quote=True,
                quote_author=_clean_line(quoted.author) or _clean_line(guest_name),
                quote_date=local_date(quoted.sent_at, locale=locale, language=language, time_zone=time_zone),
                quote_text=_clean_text(quoted.text),
            )
        return self._render("reply", language, context)

    def acknowledgement(self, *, locale: str, studio_name: str) -> Rendered:
        """The automatic answer to a new inquiry: received, the studio answers personally.

        Generic on purpose: it goes to an address we did not choose, so nothing of the
        sender's (display name, subject, text) is in it (gateway/outbound/acknowledgements.py)."""
        context: dict[str, str | bool] = {"studio_name": _clean_line(studio_name)}
        return self._render("acknowledgement", self.language(locale), context)

    def account_deletion(self, *, locale: str, studio_name: str, studio_address: str, code: str,
                         expires_at: datetime, sender_name: str, link: str = "",
                         time_zone: str = DEFAULT_TIME_ZONE) -> Rendered:
        """The request to confirm an account's deletion, mailed to the owner's registered address.

        ``expires_at`` is shown in the studio's ``time_zone``, named ("MEZ"): it is a deadline."""
        language = self.language(locale)
        context: dict[str, str | bool] = {
            "studio_name": _clean_line(studio_name),
            "studio_address": _clean_line(studio_address),
            "code": _clean_line(code),
            "expires": local_date(expires_at, locale=locale, language=language, time_zone=time_zone, with_zone=True),
            "sender_name": _clean_line(sender_name),
            "link": _clean_line(link),
        }
        return self._render("account_deletion", language, context)

    def login_link(self, *, locale: str, studio_name: str, link: str, expires_at: datetime, sender_name: str,
                   time_zone: str = DEFAULT_TIME_ZONE) -> Rendered:
        """A one-time link that signs a studio's profile in to the web messenger; ``expires_at``
        shown in the studio's ``time_zone``, named, as a deadline."""
        language = self.language(locale)
        context: dict[str, str | bool] = {
            "studio_name": _clean_line(studio_name),
            "link": _clean_line(link),
            "expires": local_date(expires_at, locale=locale, language=language, time_zone=time_zone, with_zone=True),
            "sender_name": _clean_line(sender_name),
        }
        return self._render("login_link", language, context)

    def notification(self, *, locale: str, studio_name: str, guest_name: str, text: str, files: str,
                     link: str) -> Rendered:
        """A guest's new message told to a profile: the text, the attachments (one line each, with
        its size) and the link to the conversation in the web messenger."""
        context: dict[str, str | bool] = {
            "studio_name": _clean_line(studio_name), "guest_name": _clean_line(guest_name),
            "text": _clean_text(text), "files": _clean_text(files), "link": _clean_line(link)}
        return self._render("notification", self.language(locale), context)

    def notification_digest(self, *, locale: str, studio_name: str, items: str) -> Rendered:
        """The conversations that changed since the last digest, one line (with its link) each."""
        context: dict[str, str | bool] = {"studio_name": _clean_line(studio_name), "items": _clean_text(items)}
        return self._render("notification_digest", self.language(locale), context)

    # ------------------------------------------------------------------ internals

    def _compile(self, kind: str, language: str) -> dict[tuple[bool, ...], _Compiled]:
        """Every flag combination of one HTML template, compiled by MRML once."""
        template = self._html_env.get_template(f"email/{kind}.{language}.mjml.j2")
        return {combination: _Compiled.from_html(_mjml(template.render(context)), template.name or kind)
                for combination, context in self._sentinel_contexts(kind)}

    def _compile_text(self, kind: str, language: str) -> dict[tuple[bool, ...], _Compiled]:
        """Every flag combination of one text template, cut at the sentinels like the HTML:
        filling one costs a few microseconds, a Jinja render about 25 (measured)."""
        template = self._text[kind, language]
        return {combination: _Compiled.from_text(template.render(context), template.name or kind)
                for combination, context in self._sentinel_contexts(kind)}

    @staticmethod
    def _sentinel_contexts(kind: str) -> list[tuple[tuple[bool, ...], dict[str, str | bool]]]:
        """Per flag combination, a context of sentinels with the flags set accordingly."""
        spec = _KINDS[kind]
        out = []
        for combination in itertools.product((False, True), repeat=len(spec.flags)):
            context: dict[str, str | bool] = {name: _Slot(f"@@gw:{name}@@") for name in spec.defaults}
            for flag, on in zip(spec.flags, combination):
                default = spec.defaults[flag]
                context[flag] = (True if isinstance(default, bool) else context[flag]) if on else default
            out.append((combination, context))
        return out

    def _render(self, kind: str, language: str, context: dict[str, str | bool]) -> Rendered:
        if self._compiled is None:
            text = self._text[kind, language].render(context)
            html = _mjml(self._html_env.get_template(f"email/{kind}.{language}.mjml.j2").render(context))
            return Rendered(text=text, html=html)
        variant = tuple(bool(context[flag]) for flag in _KINDS[kind].flags)
        text = self._compiled_text[kind, language][variant].fill_text(context)
        html, html_qp = self._compiled[kind, language][variant].fill(context)
        return Rendered(text=text, html=html, html_qp=html_qp)
