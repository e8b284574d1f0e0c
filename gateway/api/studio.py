"""The caller's studio and its settings; changing them is for the owner."""
from __future__ import annotations

import msgspec
from litestar import Controller, get, patch
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody
from sqlalchemy import select, update

from gateway.api.auth import require_owner
from gateway.api.errors import validation_failed
from gateway.outbound.dates import valid_time_zone
from gateway.forms.consent import valid_privacy_url
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import STUDIO
from gateway.access.studios import Caller


class StudioOut(msgspec.Struct):
    id: int
    slug: str
    name: str
    address: str
    locale: str
    acknowledge_inquiries: bool
    time_zone: str
    privacy_url: str | None     # the privacy page the inquiry form's consent checkbox links


class StudioPatch(msgspec.Struct, omit_defaults=True):
    acknowledge_inquiries: bool | None = None
    time_zone: str | None = None   # an IANA name ("Europe/Vienna"): the dates its mails show
    privacy_url: str | None = None  # https://... ; "" removes it


class StudioController(Controller):
    path = "/api/v1/studio"

    @get("/", sync_to_thread=True)
    def show(self, state: State, caller: NamedDependency[Caller]) -> StudioOut:
        return _load(state, caller.studio_id)

    @patch("/", sync_to_thread=True)
    def change(self, state: State, caller: NamedDependency[Caller], data: JSONBody[StudioPatch]) -> StudioOut:
        """Owner only: whether new inquiries get an automatic acknowledgement; the time zone."""
        require_owner(caller, "change its settings")
        if data.time_zone is not None and not valid_time_zone(data.time_zone):
            raise validation_failed([("time_zone", f"time_zone must be an IANA time zone such as Europe/Berlin, "
                                                   f"not {data.time_zone[:80]!r}")])
        if data.privacy_url and not valid_privacy_url(data.privacy_url):
            raise validation_failed([("privacy_url", "privacy_url must be an https:// (or http://) address of at most 2000 characters")])
        values = {name: value for name, value in (("acknowledge_inquiries", data.acknowledge_inquiries),
                                                  ("time_zone", data.time_zone)) if value is not None}
        if data.privacy_url is not None:
            values["privacy_url"] = data.privacy_url or None
        if values:
            with write_tx(state.engine) as conn:
                conn.execute(update(STUDIO).where(STUDIO.c.id == caller.studio_id).values(**values))
        return _load(state, caller.studio_id)


def _load(state: State, studio_id: int) -> StudioOut:
    with read_tx(state.engine) as conn:
        row = conn.execute(select(STUDIO).where(STUDIO.c.id == studio_id)).first()
    if row is None:
        raise NotFoundException("studio not found")
    return StudioOut(id=row.id, slug=row.slug, name=row.name, address=f"{row.slug}@{state.settings.mail_domain}",
                     locale=row.locale, acknowledge_inquiries=row.acknowledge_inquiries, time_zone=row.time_zone,
                     privacy_url=row.privacy_url)
