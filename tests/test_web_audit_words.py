"""The support page's audit log in words (gateway/web/audit_words.py), German and English; a code
nobody has worded yet is shown as it is."""
from __future__ import annotations

from datetime import datetime, timezone

from gateway.access.audit import AuditRecord
from gateway.web.audit_words import worded

AT = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)


def entry(action: str, actor: str, target: str = "", reason: str = "") -> AuditRecord:
    return AuditRecord(id=1, created_at=AT, actor=actor, action=action, target=target, reason=reason)


def test_reads_grants_and_people_are_worded_in_both_languages() -> None:
    log = [entry("conversation.read", "support:alice", "conversation 12", "Mails kommen doppelt"),
           entry("conversation.list.rejected", "operator:bob", "conversations", "Prüfung"),
           entry("support_grant.revoke", "owner:lena@inkwell.example", "support grant 3", "replaced by a new grant"),
           entry("profile.connect", "owner:lena@inkwell.example", "profile 7")]
    english = [(line.actor, line.action, line.target, line.reason) for line in worded(log, "en")]
    assert english == [
        ("Support (alice)", "read a conversation", "conversation 12", "Mails kommen doppelt"),
        ("Operator bob", "tried, and was refused: listed the conversations", "", "Prüfung"),
        ("Owner lena@inkwell.example", "ended support access", "grant 3", "replaced by a new grant"),
        ("Owner lena@inkwell.example", "connected a person", "person 7", "")]
    german = [(line.actor, line.action, line.target, line.reason) for line in worded(log, "de")]
    assert german == [
        ("Support (alice)", "hat eine Unterhaltung gelesen", "Unterhaltung 12", "Mails kommen doppelt"),
        ("Betreiber*in bob", "hat es versucht und wurde abgewiesen: hat die Unterhaltungen aufgelistet", "", "Prüfung"),
        ("Inhaber*in lena@inkwell.example", "hat den Support-Zugriff beendet", "Freigabe 3",
         "durch eine neue Freigabe ersetzt"),
        ("Inhaber*in lena@inkwell.example", "hat eine Person verbunden", "Person 7", "")]


def test_a_code_nobody_has_worded_is_shown_as_it_is() -> None:
    [line] = worded([entry("webhook.rotate", "robot", "endpoint 4", "why")], "de")
    assert (line.actor, line.action, line.target, line.reason) == ("robot", "webhook.rotate", "endpoint 4", "why")
