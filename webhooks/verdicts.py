"""The sender authentication each provider reports with a webhook, in one shape.

Mail that reaches us by webhook came to the provider, which saw the connecting server; we see
only the provider. So SPF, DKIM and DMARC for such mail are the provider's verdicts, taken from
the fields the provider itself fills in (never from headers inside the message, which a sender
writes), and recorded with the stored mail as JSON: {"spf": result, "dkim": [[domain,
result], ...], "dmarc": result}. The processor reads them as the message's authentication
(gateway/inbound/authentication.py, `provider_verdicts`); a provider that reports nothing leaves
the mail with no verdict. Results are RFC 8601 words; anything else a provider says is "none".
"""
from __future__ import annotations

import json
import re
from typing import Any

_WORDS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"}
# SES verdict statuses (Amazon SES "receipt object" documentation).
_SES = {"PASS": "pass", "FAIL": "fail", "GRAY": "none", "PROCESSING_FAILED": "temperror", "DISABLED": "none"}
# SendGrid's dkim field: "{@example.org : pass}", several as "{@a.example : pass, @b.example : fail}".
_SENDGRID_DKIM = re.compile(r"@([A-Za-z0-9.-]{1,253})\s*:\s*([A-Za-z]{1,12})")
MAX_SIGNATURES = 5


def _word(value: Any) -> str | None:
    """The first word of a verdict, lower-case, if it is an RFC 8601 result."""
    if not isinstance(value, str):
        return None
    word = value.strip()[:40].split(" ", 1)[0].strip("();,").lower()
    return word if word in _WORDS else None


def encode(spf: str | None = None, dkim: list[tuple[str, str]] | None = None, dmarc: str | None = None) -> str | None:
    """The JSON recorded with the mail, or None when the provider said nothing."""
    if spf is None and not dkim and dmarc is None:
        return None
    return json.dumps({"spf": spf, "dkim": [list(pair) for pair in (dkim or [])[:MAX_SIGNATURES]], "dmarc": dmarc})


def sendgrid(spf_field: str, dkim_field: str) -> str | None:
    """Inbound Parse's `SPF` and `dkim` fields."""
    dkim = [(domain.lower(), word) for domain, result in _SENDGRID_DKIM.findall(dkim_field[:2000])
            if (word := _word(result)) is not None]
    return encode(_word(spf_field), dkim)


def mailgun(spf_field: str, dkim_field: str) -> str | None:
    """The route's `X-Mailgun-Spf` and `X-Mailgun-Dkim-Check-Result` fields (no signing domain)."""
    dkim_word = _word(dkim_field)
    return encode(_word(spf_field), [("", dkim_word)] if dkim_word else None)


def ses(receipt: dict[str, Any]) -> str | None:
    """receipt.spfVerdict, dkimVerdict and dmarcVerdict of an SES "Received" notification."""
    def status(key: str) -> str | None:
        verdict = receipt.get(key)
        return _SES.get(str(verdict.get("status", "")).upper()) if isinstance(verdict, dict) else None
    dkim = status("dkimVerdict")
    return encode(status("spfVerdict"), [("", dkim)] if dkim else None, status("dmarcVerdict"))


def postmark(headers: Any) -> str | None:
    """Postmark's inbound processing records SPF as the topmost `Received-SPF` in `Headers`
    (RFC 7208 section 9.1: a receiver prepends it, so a sender's own copies come later)."""
    if not isinstance(headers, list):
        return None
    for header in headers:
        if isinstance(header, dict) and str(header.get("Name", "")).lower() == "received-spf":
            return encode(_word(header.get("Value")))
    return None
