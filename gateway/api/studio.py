"""The caller's studio and its settings; changing them is for the owner."""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, patch
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody
from sqlalchemy import select

from gateway.api.auth import require_owner
from gateway.api.errors import validation_failed
from gateway.forms.studio_settings import SettingsChange, SettingsInvalid, change_settings
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


# One line with something on it (gateway/access/studios.py single_line): the schema says so, so
# that clients (and the schema fuzzer) know a line break or a blank name is refused.
_CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
StudioName = Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                         pattern=rf"^[^{_CONTROL}]*[^\s{_CONTROL}][^{_CONTROL}]*$")]

# "" or an http(s) address with a host and no spaces, quotes or angle brackets (forms/consent.py).
PrivacyUrl = Annotated[str, msgspec.Meta(max_length=2000,
                                         pattern=r"^$|^[hH][tT][tT][pP][sS]?://[^\s\"'<>/?#\[\]]+([/?#][^\s\"'<>]*)?$")]


class StudioPatch(msgspec.Struct, omit_defaults=True):
    name: StudioName | None = None      # what guests and the messenger see: one line, 1-200 characters
    locale: Literal["de", "en"] | None = None  # the language of the studio's mails
    acknowledge_inquiries: bool | None = None
    time_zone: str | None = None   # an IANA name ("Europe/Vienna"): the dates its mails show
    privacy_url: PrivacyUrl | None = None  # https://... ; "" removes it


class StudioController(Controller):
    path = "/api/v1/studio"

    @get("/", sync_to_thread=True)
    def show(self, state: State, caller: NamedDependency[Caller]) -> StudioOut:
        return _load(state, caller.studio_id)

    @patch("/", sync_to_thread=True)
    def change(self, state: State, caller: NamedDependency[Caller], data: JSONBody[StudioPatch]) -> StudioOut:
        """Owner only: the name, whether new inquiries get an automatic acknowledgement, the
        mails' language, the time zone, the form's privacy page (gateway/forms/studio_settings.py,
        which the settings page uses too)."""
        require_owner(caller, "change its settings")
        change = SettingsChange(name=data.name, acknowledge_inquiries=data.acknowledge_inquiries, locale=data.locale,
                                time_zone=data.time_zone, privacy_url=data.privacy_url)
        try:
            with write_tx(state.engine) as conn:
                change_settings(conn, caller.studio_id, change)
        except SettingsInvalid as exc:
            raise validation_failed(exc.errors) from None
        return _load(state, caller.studio_id)


def _load(state: State, studio_id: int) -> StudioOut:
    with read_tx(state.engine) as conn:
        row = conn.execute(select(STUDIO).where(STUDIO.c.id == studio_id)).first()
    if row is None:
        raise NotFoundException("studio not found")
    return StudioOut(id=row.id, slug=row.slug, name=row.name, address=f"{row.slug}@{state.settings.mail_domain}",
                     locale=row.locale, acknowledge_inquiries=row.acknowledge_inquiries, time_zone=row.time_zone,
                     privacy_url=row.privacy_url)
