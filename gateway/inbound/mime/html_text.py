"""Readable text from HTML, for mail that has no text/plain part."""
from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser


class _HTMLText(HTMLParser):
    """Readable text from HTML: blocks become lines, links keep their text.

    Block boundaries are written as sentinels and resolved at the end, so that
    "</li><li>" gives one line break and "</p><p>" one blank line, however the tags nest.
    """

    _SOFT = "\x01"        # line break from a block boundary (div, li, tr, h1...)
    _PARA = "\x02"        # paragraph break (p, blockquote, table, lists)
    _PRE_SPACE = "\ue000"  # a space inside <pre>, protected from whitespace collapsing
    _BLOCK = {"div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "header", "footer", "dd", "dt", "address", "hr"}
    _PARAGRAPH = {"p", "blockquote", "table", "ul", "ol", "pre"}
    _SKIP = {"script", "style", "head", "title", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def _boundary(self, tag: str) -> None:
        if tag in self._PARAGRAPH:
            self.parts.append(self._PARA)
        elif tag in self._BLOCK:
            self.parts.append(self._SOFT)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "br":
            self.parts.append("\n")
        else:
            self.pre += tag == "pre"
            self._boundary(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        else:
            self._boundary(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        else:
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self._boundary(tag)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self.parts.append(data.replace(" ", self._PRE_SPACE))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        joined = "".join(self.parts).replace("\xa0", " ")
        joined = re.sub(r"[ \t]*(?:[\x01\x02][ \t]*)+",
                        lambda m: "\n\n" if self._PARA in m.group() else "\n", joined)
        lines = [line.strip().replace(self._PRE_SPACE, " ") for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    """Readable text for HTML-only mail, with the stdlib parser (no new dependency)."""
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is lenient, but never let it sink a message
        return html_lib.unescape(re.sub(r"<[^>]*>", " ", markup)).strip()
    return parser.text()
