"""Readable text from HTML, for mail that has no text/plain part.

Linear in the input, whatever the markup. The stdlib's ``html.parser`` rescans the unparsed
rest of its buffer on every call, so some inputs cost the square of their length (30 KB of
``"<a "`` took 9.5 s, an unclosed ``<!--`` of 160 KB 14 s); html5ever (through nh3) is
quadratic in nesting depth (320 KB of ``<div>`` takes 11 s). Mail is the input we trust
least, so the tokenizer here moves forward only: each step consumes what it looked at, and
what cannot end (an unclosed comment, tag or quoted value) runs to the end of the input, as
the HTML standard's tokenizer says for end-of-file in those states (WHATWG HTML 13.2.5).
"""
from __future__ import annotations

import html as html_lib
import re

_SOFT = "\x01"        # line break from a block boundary (div, li, tr, h1...)
_PARA = "\x02"        # paragraph break (p, blockquote, table, lists)
_PRE_SPACE = "\ue000"  # a space inside <pre>, protected from whitespace collapsing
_BLOCK = frozenset({"div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                    "header", "footer", "dd", "dt", "address", "hr"})
_PARAGRAPH = frozenset({"p", "blockquote", "table", "ul", "ol", "pre"})
_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
# Elements whose content is raw text up to their own end tag (WHATWG HTML 13.1.2: raw text and
# escapable raw text elements): a "<" inside them starts no tag.
_RAW_TEXT = frozenset({"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes"})

# A start or end tag from "<": name, then attributes. Every repetition is possessive and every
# alternative consumes at least one character, so a tag costs its own length and no more. A
# quoted value without its closing quote runs to the end, as does a tag without its ">", and
# then no tag is emitted (end-of-file in a tag, WHATWG HTML 13.2.5.*).
_TAG = re.compile(r"""<(/?)([A-Za-z][^\s/>]*+)(?:[^>"'=]++|=\s*+"[^"]*+"?|=\s*+'[^']*+'?|[="'])*+(>)?""")
_SPACES = re.compile(r"\s+")
_BREAKS = re.compile(r"[\x01\x02](?:[ \t]*+[\x01\x02])*+")
_BLANK_LINES = re.compile(r"\n{3,}")
# html.unescape converts a numeric reference's digits with int(), which refuses more than 4,300
# digits (CVE-2020-10735) and would raise; any reference past U+10FFFF reads as U+FFFD anyway.
_HUGE_NUMERIC_REF = re.compile(r"&#(?:[xX][0-9a-fA-F]{9,}|[0-9]{11,});?")


class _Text:
    """The text being built: blocks become lines, links keep their text.

    Block boundaries are written as sentinels and resolved at the end, so that
    "</li><li>" gives one line break and "</p><p>" one blank line, however the tags nest.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def _boundary(self, tag: str) -> None:
        if tag in _PARAGRAPH:
            self.parts.append(_PARA)
        elif tag in _BLOCK:
            self.parts.append(_SOFT)

    def start(self, tag: str, self_closing: bool) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif self_closing:
            self._boundary(tag)
        elif tag in _SKIP:
            self.skip += 1
        else:
            self.pre += tag == "pre"
            self._boundary(tag)

    def end(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        else:
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self._boundary(tag)

    def data(self, text: str) -> None:
        if self.skip or not text:
            return
        if "&" in text:  # a character reference never spans a "<"
            text = html_lib.unescape(_HUGE_NUMERIC_REF.sub("\ufffd", text))
        if self.pre:
            self.parts.append(text.replace(" ", _PRE_SPACE))
        else:
            self.parts.append(_SPACES.sub(" ", text))

    def text(self) -> str:
        joined = "".join(self.parts).replace("\xa0", " ")
        # Spaces before a break are stripped with the line below; only runs of breaks (and the
        # spaces between them) are matched, so a long run of plain spaces is never rescanned.
        joined = _BREAKS.sub(lambda m: "\n\n" if _PARA in m.group() else "\n", joined)
        lines = [line.strip().replace(_PRE_SPACE, " ") for line in joined.split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    """Readable text for HTML-only mail: one forward pass, linear in the length of `markup`."""
    out = _Text()
    size = len(markup)
    pos = 0        # where the next "<" is looked for
    text = 0       # where the text not yet handed to `out` starts
    while pos < size:
        lt = markup.find("<", pos)
        if lt < 0:
            break
        if markup.startswith("<!--", lt):
            out.data(markup[text:lt])
            close = markup.find("-->", lt + 4)
            pos = text = size if close < 0 else close + 3  # an unclosed comment runs to the end
            continue
        tag = _TAG.match(markup, lt)
        if tag is not None:
            out.data(markup[text:lt])
            if tag.group(3) is None:
                return out.text()  # end of input inside the tag: it is dropped with the rest
            pos = text = tag.end()
            name = tag.group(2).lower()
            if tag.group(1):
                out.end(name)
                continue
            self_closing = markup[pos - 2] == "/"
            out.start(name, self_closing)
            if name in _RAW_TEXT and not self_closing:
                # Raw text runs to "</name" (or the end); one search, so linear as well.
                close = re.compile(rf"</{re.escape(name)}(?=[\s/>])", re.IGNORECASE).search(markup, pos)
                stop = size if close is None else close.start()
                if name not in _SKIP:
                    out.data(markup[pos:stop])
                pos = text = stop
            continue
        if markup[lt + 1:lt + 2] in ("!", "?", "/"):
            # <!DOCTYPE>, <?xml?>, </ 3>: a "bogus comment" up to the next ">" (13.2.5.41).
            out.data(markup[text:lt])
            close = markup.find(">", lt + 1)
            pos = text = size if close < 0 else close + 1
            continue
        pos = lt + 1  # a "<" that starts nothing is text ("a < b"), kept with what follows
    out.data(markup[text:])
    return out.text()
