"""The studio's whole data as a zip download (gateway/lifecycle/export.py); the owner's alone."""
from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.response import Stream

from gateway.api.manage import content_disposition
from gateway.lifecycle.export import spool_export
from gateway.store.models import utcnow
from gateway.access.studios import Caller


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
        spooled = spool_export(state.engine, caller.studio_id, state.settings, now)
        if spooled is None:
            raise NotFoundException("studio not found")
        return Stream(spooled.chunks(), media_type="application/zip", headers={
            "Content-Disposition": content_disposition(spooled.filename(now)),
            "Content-Length": str(spooled.size), "Cache-Control": "no-store"})
