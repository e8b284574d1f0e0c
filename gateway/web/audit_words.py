"""The support page's audit log in words: the log stores stable codes (gateway/access/audit.py,
`support_grant.create`, `owner:lena@…`, `conversation 12`), which the CLI and API show as they
are; the owner reads what happened, who did it and to what, in German or English.

A code this module does not know is shown as it is: a new kind of entry must never disappear
from the owner's log because nobody has worded it yet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from gateway.access.audit import AuditRecord
from gateway.web.templating import translations

REJECTED = ".rejected"   # a support read refused after the grant check (gateway/api/auth.py)
_TARGET = re.compile(r"(?P<kind>[a-z ]+?) (?P<id>\d+)")


@dataclass(frozen=True)
class AuditLine:
    created_at: datetime
    action: str
    actor: str
    target: str     # "" when the action already says it ("listed the conversations")
    reason: str


def _actions(_: Callable[[str], str]) -> dict[str, str]:
    return {
        "conversation.list": _("listed the conversations"),
        "conversation.read": _("read a conversation"),
        "message.read": _("read a message"),
        "attachment.read": _("opened an attachment"),
        "held.list": _("listed the held mail"),
        "automatic.list": _("listed the automatic mail"),
        "support_grant.create": _("granted support access"),
        "support_grant.revoke": _("ended support access"),
        "profile.connect": _("connected a person"),
        "profile.disconnect": _("disconnected a person"),
    }


def _actors(_: Callable[[str], str]) -> dict[str, str]:
    return {"owner": _("Owner %(name)s"), "member": _("Member %(name)s"), "support": _("Support (%(name)s)"),
            "operator": _("Operator %(name)s")}


def _targets(_: Callable[[str], str]) -> dict[str, str]:
    return {"conversation": _("conversation %(id)s"), "message": _("message %(id)s"),
            "attachment": _("attachment %(id)s"), "support grant": _("grant %(id)s"),
            "profile": _("person %(id)s")}


def _reasons(_: Callable[[str], str]) -> dict[str, str]:
    return {"replaced by a new grant": _("replaced by a new grant")}  # written by gateway/access/support.py


def worded(entries: list[AuditRecord], language: str) -> list[AuditLine]:
    """The entries as the owner reads them, in `language`."""
    _ = translations(language).gettext
    actions, actors, targets, reasons = _actions(_), _actors(_), _targets(_), _reasons(_)
    lines = []
    for e in entries:
        code, refused = (e.action[:-len(REJECTED)], True) if e.action.endswith(REJECTED) else (e.action, False)
        action = actions.get(code, e.action)
        if refused and code in actions:
            action = _("tried, and was refused: %(action)s") % {"action": action}
        role, _sep, name = e.actor.partition(":")
        actor = actors[role] % {"name": name} if role in actors and name else e.actor
        found = _TARGET.fullmatch(e.target)
        if found and found["kind"] in targets:
            target = targets[found["kind"]] % {"id": found["id"]}
        else:  # "conversations", "held messages": said by the action already
            target = "" if code in actions else e.target
        lines.append(AuditLine(e.created_at, action, actor, target, reasons.get(e.reason, e.reason)))
    return lines
