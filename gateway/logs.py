"""Logging as every process of the gateway sets it up: the CLI's commands and `serve`'s worker child.

Two formats (GATEWAY_LOG_FORMAT): readable text by default, or one JSON object a line for a log
shipper. The lines an operator counts on (a mail accepted, processed, a delivery attempt, a
webhook refused) carry their facts as `extra=` fields: JSON gives them as keys, text shows them
in the message already.

What never reaches the log: mail bodies, tokens and codes are simply never passed to a log call
(tests/test_logs.py runs a mix through a real gateway at DEBUG and looks). Addresses are
personal data (GDPR art. 4(1)): below DEBUG every address-shaped string in a line, whichever
library wrote it, is masked as a last line of defence behind the call sites that leave them out.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

from gateway.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ADDRESS_MASK = "<address>"

# local@domain.tld, also inside <...> or quoted text; RFC 5321 local parts are wider than this,
# but a mask that misses an exotic local part still hides its domain (the part after the @).
# Bounded repeats (RFC 5321 §4.5.3.1: 64-octet local parts, 63-octet labels) keep it linear: an
# unbounded `[...]*@` rescans a long run of letters from every position, quadratic in the line.
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{0,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,16}", re.UNICODE)

# Every attribute a plain LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

# alembic announces its plugins and its migration context at INFO on every start and every
# command, nine lines that say nothing to an operator. A schema change ("Running upgrade ...")
# stays at INFO: that one is news.
_ALEMBIC_CHATTER = ("setup plugin ", "Context impl ", "Will assume ")
_ALEMBIC_LOGGERS = ("alembic.runtime.plugins", "alembic.runtime.migration")


def mask_addresses(text: str) -> str:
    return _ADDRESS.sub(ADDRESS_MASK, text)


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The `extra=` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """The default: one readable line, addresses masked unless the level is DEBUG."""

    def __init__(self, mask: bool) -> None:
        super().__init__(TEXT_FORMAT)
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return mask_addresses(line) if self.mask else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's `extra=` fields as
    keys, and the traceback as `exc_info` when there is one. A dozen lines of our own rather than
    python-json-logger: the keys are ours to fix, the masking must run over every value, and one
    dependency less in a mail server."""

    def __init__(self, mask: bool) -> None:
        super().__init__()
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        line = json.dumps(entry, ensure_ascii=False, default=str)  # numbers and lists as JSON, the rest as text
        return mask_addresses(line) if self.mask else line


class _AlembicChatterToDebug(logging.Filter):
    """Demote alembic's start-up chatter to DEBUG; dropped unless DEBUG is wanted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and isinstance(record.msg, str) and record.msg.startswith(_ALEMBIC_CHATTER):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_CHATTER_FILTER = _AlembicChatterToDebug()


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelName(settings.log_level)
    mask = level > logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(mask) if settings.log_format == "json" else TextFormatter(mask))
    # Not forced: a host that set up logging before us (a test runner, an embedding app) keeps it.
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    for name in _ALEMBIC_LOGGERS:
        chatty = logging.getLogger(name)
        if _CHATTER_FILTER not in chatty.filters:
            chatty.addFilter(_CHATTER_FILTER)
