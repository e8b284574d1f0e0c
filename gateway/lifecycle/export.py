"""A studio's whole data as one zip archive: its copy to keep, or to take elsewhere.

    export.json        the studio, its profiles, guests, and every conversation with its
                       messages (text, HTML, the headers we keep, delivery state)
    attachments/<attachment id>/<file name>   each attachment's bytes
    mail/<message id>.eml                     each inbound message's raw mail, as received

Deleted items still in the trash are included, marked by `deleted_at`: until the purge they
are the studio's data, and a studio leaving for good wants them too. Held and rejected mail
is included with its state. Never included: API tokens or their hashes, the reply-address
key or any other secret, and other studios' data (every query is scoped to the studio).

The archive is written into a file (one pass over the database in one read transaction, so
it is a consistent snapshot) with the JSON streamed in conversation by conversation, so a
large studio never has to fit in memory; bytes are read one blob at a time.
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Iterator

import msgspec
from sqlalchemy import Connection, Engine, select

from gateway.store.blobs import blob_store
from gateway.store.db import read_tx
from gateway.store.tables import ATTACHMENT, FORM_SUBMISSION, FORM_VERSION, GUEST, MESSAGE, OUTBOUND_JOB, STUDIO
from gateway.mail.files import sanitise_filename
from gateway.settings import Settings
from gateway.store.tables import CONVERSATION
from gateway.store.tables import PROFILE

FORMAT = "studio-mail-gateway-export"
VERSION = 1
DOCUMENT = "export.json"


@dataclass
class ExportSummary:
    slug: str
    conversations: int = 0
    messages: int = 0
    files: list[tuple[str, str, int]] = field(default_factory=list)   # (path in the zip, sha256, zip method)


def write_export(conn: Connection, studio_id: int, settings: Settings, out: IO[bytes],
                 now: datetime) -> ExportSummary | None:
    """Write the studio's archive to `out`; None if there is no such studio."""
    studio = conn.execute(select(STUDIO).where(STUDIO.c.id == studio_id)).first()
    if studio is None:
        return None
    summary = ExportSummary(slug=studio.slug)
    head = {
        "format": FORMAT, "version": VERSION, "exported_at": now,
        "studio": {"id": studio.id, "slug": studio.slug, "name": studio.name,
                   "address": f"{studio.slug}@{settings.mail_domain}", "owner_email": studio.owner_email,
                   "locale": studio.locale, "country": studio.country,
                   "acknowledge_inquiries": studio.acknowledge_inquiries, "created_at": studio.created_at},
        "profiles": [dict(r._mapping) for r in conn.execute(
            select(PROFILE.c.id, PROFILE.c.email, PROFILE.c.name, PROFILE.c.role, PROFILE.c.created_at,
                   PROFILE.c.disconnected_at).where(PROFILE.c.studio_id == studio_id).order_by(PROFILE.c.id))],
        "guests": [dict(r._mapping) for r in conn.execute(
            select(GUEST.c.id, GUEST.c.email, GUEST.c.name, GUEST.c.created_at)
            .where(GUEST.c.studio_id == studio_id).order_by(GUEST.c.id))],
        "form_versions": [dict(r._mapping) for r in conn.execute(
            select(FORM_VERSION.c.version, FORM_VERSION.c.definition_json, FORM_VERSION.c.created_at)
            .where(FORM_VERSION.c.studio_id == studio_id).order_by(FORM_VERSION.c.version))],
    }
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(DOCUMENT, "w", force_zip64=True) as doc:
            doc.write(b"{")
            for key, value in head.items():
                doc.write(_json(key) + b": " + _json(value) + b",\n")
            doc.write(b'"conversations": [')
            for index, conversation in enumerate(_conversations(conn, studio_id, summary)):
                doc.write((b",\n" if index else b"\n") + _json(conversation))
            doc.write(b"\n]}\n")
        for path, sha256, method in summary.files:
            data = blob_store.get(conn, sha256)
            if data is None:  # the foreign keys make this impossible unless the store was tampered with
                raise LookupError(f"blob {sha256} for {path} is missing")
            archive.writestr(path, data, compress_type=method)
    return summary


def _conversations(conn: Connection, studio_id: int, summary: ExportSummary) -> Iterator[dict[str, Any]]:
    for c in conn.execute(select(CONVERSATION).where(CONVERSATION.c.studio_id == studio_id)
                          .order_by(CONVERSATION.c.id)).all():
        messages = conn.execute(select(MESSAGE).where(MESSAGE.c.studio_id == studio_id,
                                                      MESSAGE.c.conversation_id == c.id)
                                .order_by(MESSAGE.c.received_at, MESSAGE.c.id)).all()
        ids = [m.id for m in messages]
        files: dict[int, list[Any]] = {}
        jobs: dict[int, Any] = {}
        if ids:
            for a in conn.execute(select(ATTACHMENT).where(ATTACHMENT.c.message_id.in_(ids)).order_by(ATTACHMENT.c.id)):
                files.setdefault(a.message_id, []).append(a)
            jobs = {j.message_id: j for j in conn.execute(select(
                OUTBOUND_JOB.c.message_id, OUTBOUND_JOB.c.status, OUTBOUND_JOB.c.attempts, OUTBOUND_JOB.c.sent_at,
                OUTBOUND_JOB.c.last_error).where(OUTBOUND_JOB.c.message_id.in_(ids)))}
        submissions = [dict(r._mapping) for r in conn.execute(select(
            FORM_SUBMISSION.c.message_id, FORM_SUBMISSION.c.form_version, FORM_SUBMISSION.c.answers_json,
            FORM_SUBMISSION.c.consent_at, FORM_SUBMISSION.c.created_at).where(
            FORM_SUBMISSION.c.studio_id == studio_id, FORM_SUBMISSION.c.conversation_id == c.id)
            .order_by(FORM_SUBMISSION.c.id))]
        summary.conversations += 1
        summary.messages += len(messages)
        yield {
            "id": c.id, "guest_id": c.guest_id, "subject": c.subject, "status": c.status,
            "created_at": c.created_at, "last_message_at": c.last_message_at, "message_count": c.message_count,
            "read_at": c.read_at, "deleted_at": c.deleted_at, "deleted_by": c.deleted_by,
            "messages": [_message(m, files.get(m.id, []), jobs.get(m.id), summary) for m in messages],
            "form_submissions": submissions,   # the inquiry form's answers; uploads are the messages' attachments
        }


def _message(m: Any, attachments: list[Any], job: Any, summary: ExportSummary) -> dict[str, Any]:
    raw_path = None
    if m.raw_sha256 is not None:
        raw_path = f"mail/{m.id}.eml"
        summary.files.append((raw_path, m.raw_sha256, zipfile.ZIP_DEFLATED))
    listed = []
    for index, a in enumerate(attachments, start=1):
        # The name came from whoever wrote the mail: basename only, so nothing unpacks outside
        # the archive's folder ("../../.bashrc"); the id keeps equal names apart.
        path = f"attachments/{a.id}/{sanitise_filename(a.filename, a.content_type, index)}"
        summary.files.append((path, a.sha256, zipfile.ZIP_STORED))   # photos and PDFs are compressed already
        listed.append({"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size,
                       "sha256": a.sha256, "inline": a.inline, "content_id": a.content_id, "path": path})
    return {
        "id": m.id, "direction": m.direction, "state": m.state,
        "from": {"email": m.from_email, "name": m.from_name},
        "to": json.loads(m.to_json or "[]"), "cc": json.loads(m.cc_json or "[]"),
        "subject": m.subject, "text": m.text, "full_text": m.full_text, "html": m.html,
        "message_id": m.message_id, "in_reply_to": m.in_reply_to, "references": json.loads(m.references_json or "[]"),
        "sent_at": m.sent_at, "received_at": m.received_at, "thread_rule": m.thread_rule,
        "automatic": m.automatic, "auto_kind": m.auto_kind, "bounce_of_id": m.bounce_of_id,
        "delivery": m.delivery, "delivery_attempts": job.attempts if job else None,
        "delivery_error": job.last_error if job else None,
        "deleted_at": m.deleted_at, "deleted_by": m.deleted_by,
        "raw_eml": raw_path, "attachments": listed,
    }


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


CHUNK = 256 * 1024


@dataclass
class Spooled:
    """A finished archive in an unnamed file, for the API and the pages to stream."""

    file: IO[bytes]
    slug: str
    size: int

    def filename(self, now: datetime) -> str:
        """The download's name: the slug (a-z, 0-9, hyphens) and when it was made."""
        return f"{self.slug}-export-{now:%Y%m%d-%H%M%S}.zip"

    def chunks(self) -> Iterator[bytes]:
        """The archive in CHUNK pieces; the file is closed (and so gone) afterwards."""
        try:
            self.file.seek(0)
            while chunk := self.file.read(CHUNK):
                yield chunk
        finally:
            self.file.close()


def spool_export(engine: Engine, studio_id: int, settings: Settings, now: datetime) -> Spooled | None:
    """The studio's archive, built in an unnamed file beside the data (it holds personal data:
    not in a shared /tmp, and gone from the file system even if the process dies mid-way);
    None if there is no such studio."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    spool = tempfile.TemporaryFile(dir=settings.data_dir)
    try:
        with read_tx(engine) as conn:
            summary = write_export(conn, studio_id, settings, spool, now)
        if summary is None:
            spool.close()
            return None
        return Spooled(spool, summary.slug, spool.tell())
    except BaseException:
        spool.close()
        raise
