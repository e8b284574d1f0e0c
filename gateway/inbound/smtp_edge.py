"""aiosmtpd's SMTP protocol with its hot paths replaced: the one place that reads its private parts.

A sampling profile of stock aiosmtpd 1.4.6 under load (issue "Mail in faster than a do-nothing
server") put its CPU into four pieces of protocol code, not into storage: DATA read one
`readuntil` per line with two joins per line; the `email` header parser (and a `typing.Protocol`
class defined on every call) for each MAIL/RCPT address; one `send()` per reply line; and
per-connection introspection in `SMTP.__init__`. `FastSMTP` keeps aiosmtpd's command loop,
handler hooks, AUTH, STARTTLS and `Controller` compatibility, and replaces only those four:

- **DATA** is read in whole chunks; the end (`CRLF.CRLF`, or `.CRLF` as the first line) is
  found with one `find` per chunk and the message un-stuffed with one `replace`. Only
  `CRLF.CRLF` ends it: `LF.LF`, `LF.CRLF`, `CRLF.LF` and `CR.CRLF` are message text, exactly as
  aiosmtpd (since 1.4.5, the SMTP smuggling fix) reads them. Bare CR and LF inside a message
  are kept as they came, as aiosmtpd keeps them: they can no longer end a message, so they
  can't smuggle one, and refusing them would bounce mail from the many scripts and form
  mailers that write bare LF (RFC 5321 2.3.8 forbids sending them, not reading them).
  A message over the size limit is answered `552` after its final dot, and a line over
  aiosmtpd's line limit `500`, in stream order like aiosmtpd; past either limit only the last
  four bytes are kept, to find the end, never the message.
- **MAIL/RCPT paths** of the common shape `<dot-atom@domain>` are read by one regular
  expression; everything else goes to aiosmtpd's own parser, and tests/test_smtp_paths.py
  holds the two equal on every input.
- **Replies** are coalesced under `PIPELINING` (RFC 2920, advertised here): a `250` is held only
  while the client's next complete command is already buffered, so it goes out with the
  replies that command produces; continuation lines wait for their last line; `354`, `334`,
  `220`, `221` and every `4xx`/`5xx` are sent at once, so a client never waits on a held reply.
  When the session ends while that next command is still being handled (a hook awaiting the
  database, then the client's EOF or the idle timeout), what is held goes out first: aiosmtpd
  had sent it already, and a lost `250` for a stored message makes the client send it again.
- **Per connection**, `dir()` of the protocol (and of a handler that opts in) answers from a
  per-class cache of the names aiosmtpd looks for (`smtp_*`, `auth_*`, `handle_*`), so
  `__init__` no longer walks every attribute: 89 µs became 20 µs.

Private parts used, all of aiosmtpd 1.4.6 and CPython's asyncio 3.11–3.13 (pinned in
pyproject.toml; tests/test_smtp_edge_internals.py fails loudly when an upgrade changes them):
`SMTP._reader` (the connection's `StreamReader`), `SMTP._timeout_cb` (the idle timeout's end),
`StreamReader._buffer` (to see whether a complete command is already waiting) and
`StreamReader.feed_data` (to hand back the commands a pipelining client sent after the final
dot, read together with the message).
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from functools import lru_cache
from typing import AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax
from aiosmtpd.smtp import log as aiosmtpd_log

# The common path of MAIL/RCPT: <dot-atom@domain> (RFC 5321 4.1.2, ASCII), then parameters.
# Anything else (quoted local parts, comments, UTF-8, source routes, "<>") takes the full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>(?:[ \t]+([^(]*))?")

_END = b"\r\n.\r\n"
_STUFFED = b"\r\n."
_READ_ALL = 1 << 30        # StreamReader.read(n) hands over at most n bytes: this means "all buffered"
_KEEP = len(_END) - 1      # bytes a terminator split across two reads can have in the earlier one


class DataTooLong(Exception):
    """A line of the message is over aiosmtpd's line limit (RFC 5321 4.5.3.1.6)."""


class DataTooMuch(Exception):
    """The message is over the size limit (answered 552)."""


class DataRefused(Exception):
    """Raised by a subclass's `_data_chunk` to end DATA at once: `reply` (a `421`) is sent and
    the connection closed, as RFC 5321 3.8 lets a server do mid-transfer. FastSMTP itself never
    raises it, so the stock-vs-edge twins stay equal."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class DataReader:
    """The DATA phase over whole chunks: end found, limits checked, content un-stuffed once.

    `feed` takes each chunk as it arrives and answers the message, or None while the end has
    not come; `rest` is what followed the final dot (pipelined commands). Kept apart from the
    protocol so its arithmetic can be tested on every split of a message into chunks.
    """

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self._size_limit = size_limit or 0
        self._line_limit = line_limit          # a line's bytes with its CRLF, before un-stuffing
        # The message so far behind a virtual CRLF, so a first line of "." ends it like any other.
        self._buf = bytearray(b"\r\n")
        self._line_start = 2                   # where the line being received starts in _buf
        self._refusal: Exception | None = None
        self._stuffed = False                  # a line starting with "." was seen
        self.rest = b""

    def feed(self, chunk: bytes) -> bytes | None:
        """Add a chunk; the raw message once its end is in (DataTooLong/DataTooMuch past a limit)."""
        buf = self._buf
        searched = max(0, len(buf) - _KEEP)
        buf += chunk
        # One scan finds both: the end is the first CRLF "." that is followed by CRLF, and any
        # CRLF "." before it is a stuffed line (so most messages are never scanned again).
        end = first = buf.find(_STUFFED, searched)
        if first >= 0:
            end = buf.find(_END, first)
            if end != first:
                self._stuffed = True
        stop = len(buf) if end < 0 else end + 2          # content ends after the last line's CRLF
        if self._refusal is None:
            self._check(stop)
        if end < 0:
            if self._refusal is not None:                 # keep only what can still be the end
                del buf[:-_KEEP]
                self._line_start = 0
            return None
        self.rest = bytes(buf[end + len(_END):])
        if self._refusal is not None:
            raise self._refusal
        if self._stuffed:                                 # the virtual CRLF un-stuffs a first line too
            content = bytes(buf[:stop]).replace(_STUFFED, b"\r\n")[2:]
        else:
            content = bytes(buf[2:stop])
        buf.clear()
        return content

    def _check(self, stop: int) -> None:
        """Limits over the lines complete up to `stop`, answered in aiosmtpd's order.

        aiosmtpd counts a line toward the size when it has read it whole, and notices a line
        over its reader's limit (more than `line_limit` bytes before the CRLF) as soon as that
        many bytes are buffered, before counting it; a line just over `line_limit` with its CRLF
        is noticed after counting. Whichever it noticed first is the answer; so here.
        """
        buf, start, line_limit = self._buf, self._line_start, self._line_limit
        last = buf.rfind(b"\r\n", start, stop)
        complete_end = last + 2 if last >= 0 else start
        self._line_start = complete_end
        if complete_end - start > line_limit and self._may_hold_long_line(start, complete_end - 2):
            lengths = list(map(len, bytes(buf[start:complete_end - 2]).split(b"\r\n")))
            if max(lengths) + 2 > line_limit:
                offset = start - 2                         # offsets in the message, without _buf's CRLF
                for length in lengths:
                    if length + 2 > line_limit:
                        self._refuse_line(offset, length)
                        return
                    offset += length + 2
        if self._size_limit and complete_end - 2 > self._size_limit:
            self._refusal = DataTooMuch()
        elif stop - complete_end >= line_limit + 2:        # unfinished, and already too long
            self._refuse_line(complete_end - 2, stop - complete_end)

    def _may_hold_long_line(self, start: int, end: int) -> bool:
        """Whether buf[start:end] may hold a line too long, looked at in blocks of half a line.

        A line over the limit is a stretch of at least line_limit - 1 bytes with no CRLF in it,
        so it covers one whole block of (line_limit - 1) // 2 bytes of any fixed grid: when every
        block holds a CRLF, no line is too long. A few `find`s per message instead of a split
        into lines; only a block without one sends the region to the exact count.
        """
        buf, block = self._buf, (self._line_limit - 1) // 2
        for p in range(start, end - block + 1, block):
            if buf.find(b"\r\n", p, p + block + 1) < 0:
                return True
        return False

    def _refuse_line(self, offset: int, length: int) -> None:
        noticed_before_counting = length > self._line_limit
        counted = offset if noticed_before_counting else offset + length + 2
        over = bool(self._size_limit) and counted > self._size_limit
        self._refusal = DataTooMuch() if over else DataTooLong()


@lru_cache(maxsize=32)
def protocol_names(cls: type) -> list[str]:
    """The names aiosmtpd's __init__ looks for with dir()/getmembers, on the protocol and on its
    handler: commands, handler hooks and AUTH methods. A handler class may answer its own
    `__dir__` with this too, for the same saving (gateway/inbound/smtp.py's does)."""
    return sorted(n for n in dir(cls) if n.startswith(("smtp_", "auth_", "handle_")))


class FastSMTP(SMTP):
    """aiosmtpd's SMTP, its command handling kept, with the four costly paths replaced."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._pending = bytearray()
        self._in_ehlo = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio turns Nagle's algorithm off only for sockets it made itself (proto 6); ours come
        # from socket.create_server (proto 0), and a held reply line would wait for the peer's
        # delayed ACK, 40 ms on Linux. uvloop always sets it; set it here for either loop.
        if self.transport is None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ runs dir(self) and inspect.getmembers(self) on every connection to
        # find smtp_* and auth_* methods: a walk over some 150 attributes, about 50 µs. The
        # names it keeps are a property of the class.
        return protocol_names(type(self))

    # --- replies ---------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str) else status
        if self._in_ehlo and response[:4] == b"250 ":
            self._pending += b"250-PIPELINING\r\n"     # before the last line of a successful EHLO
        self._pending += response
        self._pending += b"\r\n"
        aiosmtpd_log.debug("%r << %r", self.session.peer if self.session else None, response)
        if response[3:4] == b"-" or (response[:3] == b"250" and self._command_waiting()):
            return
        self._writer.write(bytes(self._pending))
        self._pending.clear()
        await self._writer.drain()

    def _send_held(self) -> None:
        """Send held replies now: the session ends before the command after them answers."""
        if self._pending and self.transport is not None and not self.transport.is_closing():
            self._writer.write(bytes(self._pending))
            self._pending.clear()

    def eof_received(self) -> bool | None:
        self._send_held()              # aiosmtpd cancels the session; the client may still read
        return super().eof_received()

    def _timeout_cb(self) -> None:
        self._send_held()              # aiosmtpd closes the transport, which sends what is written
        super()._timeout_cb()

    def _command_waiting(self) -> bool:
        """A complete command line is buffered: its reply will follow this one without waiting."""
        return b"\n" in self._reader._buffer  # type: ignore[attr-defined]

    @syntax("EHLO hostname")           # HELP lists only commands that carry aiosmtpd's syntax
    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    # --- addresses -------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd 1.4's own, with a fast path for `<dot-atom@domain>` and without the
        typing.Protocol class it defined on every call (two thirds of its cost)."""
        if not arg:
            return "", ""
        simple = _SIMPLE_PATH.fullmatch(arg)
        if simple is not None:
            addr, rest = simple.group(1), simple.group(2) or ""
            if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return addr, rest
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr = address.addr_spec
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    # --- DATA ------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # The checks and answers before 354 are aiosmtpd's, in its order.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = DataReader(self.data_size_limit, self.line_length_limit)
        reader = self._reader
        try:
            while True:
                chunk = await reader.read(_READ_ALL)
                if not chunk:       # end of stream: aiosmtpd's eof_received is cancelling us
                    raise asyncio.CancelledError
                self._data_chunk(len(chunk))
                content = data.feed(chunk)
                if content is not None:
                    break
        except (DataTooLong, DataTooMuch) as refusal:
            self._hand_back(data.rest)
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)" if isinstance(refusal, DataTooLong)
                            else "552 Error: Too much mail data")
            self._set_post_data_state()
            return
        except DataRefused as refusal:
            await self.push(refusal.reply)
            self._set_post_data_state()
            if self.transport is not None:
                self.transport.close()
            return
        except asyncio.CancelledError:
            aiosmtpd_log.info("Connection lost during DATA")
            self._writer.close()
            raise
        self._hand_back(data.rest)
        await self._deliver(content)

    def _data_chunk(self, size: int) -> None:
        """Called with the size of each chunk of DATA as it arrives, before it is kept; a
        subclass may raise DataRefused (gateway/inbound/smtp.py caps the bytes held across
        sessions). Stock: nothing."""

    def _hand_back(self, rest: bytes) -> None:
        """Return to the reader what followed the final dot: the next pipelined commands.

        `read(_READ_ALL)` emptied the reader's buffer and nothing ran since, so feeding the
        rest back puts it exactly where the command loop will read next.
        """
        if rest and not self._reader.at_eof():
            self._reader.feed_data(rest)

    async def _deliver(self, original_content: bytes) -> None:
        """aiosmtpd's end of DATA: decode if asked, call handle_DATA, answer."""
        assert self.envelope is not None
        content: str | bytes = original_content
        if self._decode_data:
            if self.enable_SMTPUTF8:
                content = original_content.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    content = original_content.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        self.envelope.content = content
        self.envelope.original_content = original_content
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)
