"""Is this mail from a machine? Bounces, auto-replies and lists must not become chat.

A guest's out-of-office reply posted into the studio's messenger is noise; answering it
automatically would start a mail loop (RFC 3834 section 2 is all about not doing that).
We look at the markers senders set for exactly this purpose, then at the weaker signs
(well-known subjects, daemon senders) that real mail needs as well.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.inbound.mime import Address, ParsedMessage

KINDS = ("bounce", "auto-reply", "bulk", "list", "auto-generated")


@dataclass(frozen=True)
class AutoInfo:
    automatic: bool
    kind: str | None            # one of KINDS, None for mail a person wrote
    bounced_message_ids: tuple[str, ...] = ()


HUMAN = AutoInfo(automatic=False, kind=None)

# Local parts that only ever send delivery reports (RFC 5321 section 4.5.1 requires
# "postmaster"; "MAILER-DAEMON" is the sendmail/Postfix tradition).
_DAEMON_LOCAL_PARTS = {"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster"}
_FAILURE_SUBJECT = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery (?:has )?fail"
    r"|mail delivery fail|returned mail|failure notice|delivery failure|could not be delivered"
    r"|unzustellbar|nicht zustellbar|zustellung fehlgeschlagen|unzustellbare"
    r"|fehlgeschlagen|nicht zugestellt",
    re.IGNORECASE)
# Reply/forward prefixes that may precede an auto-reply subject, in the spellings German
# and English clients use ("AW" is Outlook's German "Antwort", "WG" "Weitergeleitet").
# The whitespace before a "[2]" belongs to the optional group: two "\s*" side by side split a
# run of spaces every possible way, and a subject of "re" and 64 KB of spaces took seconds.
_PREFIXES = r"(?:(?:re|aw|antw|wg|fw|fwd|sv)(?:\s*\[\d+\])?\s*:\s*)*"
_AUTO_REPLY_SUBJECT = re.compile(
    _PREFIXES + r"(?:abwesenheitsnotiz|automatische antwort|out of (?:the )?office"
    r"(?: autoreply)?|auto-?reply|automatic reply|abwesend|auto)\s*(?::|$)",
    re.IGNORECASE)
# X-Auto-Response-Suppress (MS-OXCMAIL 2.2.3.2.14): senders that set these values say
# their message is itself automatic and must not be answered.
_SUPPRESS_VALUES = {"all", "dr", "autoreply", "oof"}


def _local_part(address: str) -> str:
    return address.strip().strip("<>").rpartition("@")[0].lower() if "@" in address \
        else address.strip().strip("<>").lower()


def classify(msg: ParsedMessage, mail_from: str) -> AutoInfo:
    """Decide whether a parsed message was sent automatically, and which kind it is.

    ``mail_from`` is the SMTP reverse-path (MAIL FROM), "" or "<>" for the null path.
    Bounces are checked first because they carry the ids of the mail that failed.
    """
    reverse_path = (mail_from or "").strip()
    null_path = reverse_path in ("", "<>")
    subject = msg.subject or ""

    # RFC 3464 / RFC 3462: a multipart/report delivery-status is a DSN.
    if msg.content_type == "multipart/report" or msg.dsn_original_message_ids \
            or msg.dsn_failed_recipients:
        report_type = (msg.header("Content-Type") or "").lower()
        if msg.dsn_original_message_ids or msg.dsn_failed_recipients \
                or "delivery-status" in report_type:
            return AutoInfo(True, "bounce", tuple(msg.dsn_original_message_ids))

    sender = msg.from_.email if msg.from_ is not None else ""
    from_daemon = _local_part(sender) in _DAEMON_LOCAL_PARTS or \
        (not null_path and _local_part(reverse_path) in _DAEMON_LOCAL_PARTS)
    if (from_daemon or null_path) and _FAILURE_SUBJECT.search(subject):
        return AutoInfo(True, "bounce", tuple(msg.dsn_original_message_ids))

    # RFC 3834 section 5.1: any value other than "no" means automatic.
    auto_submitted = (msg.header("Auto-Submitted") or "").strip().lower()
    auto_submitted = auto_submitted.split(";", 1)[0].strip()
    if auto_submitted.startswith("auto-replied"):
        return AutoInfo(True, "auto-reply")
    if msg.header("X-Autoreply") is not None or msg.header("X-Autorespond") is not None:
        return AutoInfo(True, "auto-reply")
    precedence = (msg.header("Precedence") or "").strip().lower()
    if precedence == "auto_reply" or _AUTO_REPLY_SUBJECT.match(subject.strip()):
        return AutoInfo(True, "auto-reply")
    # RFC 2369 / RFC 2919: only mailing lists add List-* headers.
    if precedence == "list" or msg.header("List-Id") is not None \
            or msg.header("List-Unsubscribe") is not None:
        return AutoInfo(True, "list")
    if precedence in ("bulk", "junk"):
        return AutoInfo(True, "bulk")
    if auto_submitted and auto_submitted != "no":
        return AutoInfo(True, "auto-generated")
    suppress = {v.strip().lower() for v in (msg.header("X-Auto-Response-Suppress") or "").split(",")}
    if suppress & _SUPPRESS_VALUES:
        return AutoInfo(True, "auto-generated")
    # RFC 5321 section 4.5.5: the null reverse-path is for notifications only.
    if null_path:
        return AutoInfo(True, "bounce" if from_daemon else "auto-generated",
                        tuple(msg.dsn_original_message_ids))
    return HUMAN


# --- website contact forms -----------------------------------------------------------------

# The senders form plugins and site builders use for their notifications (WordPress' Contact
# Form 7 sends as wordpress@<site>, most others as noreply@ / no-reply@ / forms@ ...).
# Matched on the local part with "_" and "." folded to "-"; anchored, no nested repetition.
_FORM_SENDER = re.compile(
    r"(?:no-?reply|do-?not-?reply|wordpress|web-?forms?|website|forms?|formular|kontakt(?:-?formular)?"
    r"|contact(?:-?form)?|notifications?|notify|mailer|www-data|www|wix|jimdo|typeform|webflow)"
    r"(?:[-+].*)?\Z")
_FORM_KINDS = (None, "bulk", "auto-generated")   # never a bounce, an auto-reply or a list


def website_form_guest(msg: ParsedMessage, auto: AutoInfo, mail_domain: str) -> Address | None:
    """The guest of a website's contact-form notification: its Reply-To, or None.

    A form sends From the site's no-reply address with Reply-To the visitor who filled it in,
    and is often marked bulk or auto-generated; it is an inquiry all the same, and answering
    must reach the visitor. It counts as a form when Reply-To names one other address, not
    ours, and the sender is a form's (a no-reply-like local part) or the mail is marked bulk or
    auto-generated. Bounces, auto-replies and list mail never are: their Reply-To is not a guest.
    """
    if auto.kind not in _FORM_KINDS or len(msg.reply_to) != 1 or msg.from_ is None:
        return None
    guest = msg.reply_to[0]
    email = guest.email.strip().lower()
    sender = msg.from_.email.strip().lower()
    if "@" not in email or email == sender or email.rpartition("@")[2] == mail_domain \
            or email.rpartition("@")[2].endswith("." + mail_domain):
        return None
    local = re.sub(r"[_.]", "-", sender.rpartition("@")[0])[:64]
    if auto.automatic or _FORM_SENDER.match(local):
        return guest
    return None
