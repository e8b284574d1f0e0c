"""The studio's whole data as a zip download (gateway/lifecycle/export.py); the owner's alone."""
from __future__ import annotations

import tempfile
from typing import IO, Iterator

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.response import Stream

from gateway.api.manage import content_disposition
from gateway.store.db import read_tx
from gateway.lifecycle.export import write_export
from gateway.store.models import utcnow
from gateway.access.studios import Caller

CHUNK = 256 * 1024


def _chunks(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        spool.seek(0)
        while chunk := spool.read(CHUNK):
            yield chunk
    finally:
        spool.close()


class ExportController(Controller):
    path = "/api/v1/export"

    @get("/", sync_to_thread=True, media_type="application/zip", raises=[PermissionDeniedException])
    def download(self, state: State, caller: NamedDependency[Caller]) -> Stream:
        """Owner only: a zip of `export.json` (studio, profiles, guests, conversations with their
        messages and delivery state; deleted items still in the trash marked by `deleted_at`),
        `attachments/` and the raw inbound mail under `mail/`. No tokens, hashes or secrets."""
        if caller.role != "owner":
            raise PermissionDeniedException("only the studio's owner can export its data")
        now = utcnow()
        # Built in an unnamed file beside the data (the archive holds personal data: not in a
        # shared /tmp, and gone from the file system even if this process dies mid-way).
        state.settings.data_dir.mkdir(parents=True, exist_ok=True)
        spool = tempfile.TemporaryFile(dir=state.settings.data_dir)
        try:
            with read_tx(state.engine) as conn:
                summary = write_export(conn, caller.studio_id, state.settings, spool, now)
            if summary is None:
                raise NotFoundException("studio not found")
            size = spool.tell()
        except BaseException:
            spool.close()
            raise
        return Stream(_chunks(spool), media_type="application/zip", headers={
            "Content-Disposition": content_disposition(f"{summary.slug}-export-{now:%Y%m%d-%H%M%S}.zip"),
            "Content-Length": str(size), "Cache-Control": "no-store"})
