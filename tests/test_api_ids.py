"""Ids are never reused (issue 14, migration 0016): an id an app has cached names one row for
ever, also after that row was erased and another studio's rows were made."""
from __future__ import annotations

from sqlalchemy import select, text
from sqlmodel import SQLModel

from gateway.store.db import make_engine, read_tx
from gateway.store.tables import ATTACHMENT, MESSAGE
from tests.conftest import RunningGateway
from tests.mail import make_mail

PHOTO = b"\x89PNG\r\n\x1a\n" + bytes(300)


def _mail_in(gw: RunningGateway, address: str, subject: str) -> int:
    """A guest's mail with a photo, processed; its conversation."""
    mail = make_mail(subject=subject, from_=f"Guest <{subject.lower()}@example.org>",
                     attachments=[("foto.png", "image/png", PHOTO)])
    assert gw.send(mail, address, mail_from=f"{subject.lower()}@example.org").code == 250
    [result] = gw.process()
    conversation = result.outcomes[0].conversation_id
    assert conversation is not None
    return conversation


def _ids(gw: RunningGateway, studio_id: int) -> dict[str, set[int]]:
    with read_tx(gw.engine) as conn:
        messages = set(conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.studio_id == studio_id)).scalars())
        attachments = set(conn.execute(select(ATTACHMENT.c.id).where(ATTACHMENT.c.studio_id == studio_id)).scalars())
    return {"message": messages, "attachment": attachments}


def test_ids_stay_unique_after_an_erasure(gw: RunningGateway) -> None:
    inkwell, lotus = gw.add_studio("inkwell"), gw.add_studio("lotus")
    owner = gw.api(inkwell.token)
    erased = [_mail_in(gw, inkwell.address, f"Rose{n}") for n in range(3)]
    guests = {owner.get(f"/api/v1/conversations/{c}").json()["guest"]["id"] for c in erased}
    replied = owner.post(f"/api/v1/conversations/{erased[-1]}/replies", json={"text": "Gern!"})
    assert replied.status_code == 202
    before = _ids(gw, inkwell.id)
    for guest in guests:  # the real erasure path: everything of the guest goes, for good
        assert owner.post(f"/api/v1/guests/{guest}/erase").status_code == 200
    assert _ids(gw, inkwell.id) == {"message": set(), "attachment": set()}
    for conversation in erased:
        assert owner.get(f"/api/v1/conversations/{conversation}").status_code == 404

    fresh = [_mail_in(gw, lotus.address, f"Lotus{n}") for n in range(3)]
    other = gw.api(lotus.token)
    assert not set(fresh) & set(erased), (fresh, erased)
    assert min(fresh) > max(erased)
    after = _ids(gw, lotus.id)
    assert not after["message"] & before["message"] and not after["attachment"] & before["attachment"]
    guests_after = {other.get(f"/api/v1/conversations/{c}").json()["guest"]["id"] for c in fresh}
    assert not guests_after & guests
    # The erased ids stay unknown to the studio that had them, and to the new one.
    for conversation in erased:
        assert owner.get(f"/api/v1/conversations/{conversation}").status_code == 404
        assert other.get(f"/api/v1/conversations/{conversation}").status_code == 404


def test_every_table_with_an_integer_id_autoincrements_on_sqlite(sqlite_url: str) -> None:
    """The migrated schema (not only the models) says AUTOINCREMENT, for every such table,
    including ones added later: their migration must ask for it too."""
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            schema = dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
    finally:
        engine.dispose()
    keyed = [t.name for t in SQLModel.metadata.tables.values()
             if [c.name for c in t.primary_key.columns] == ["id"] and t.c.id.type.python_type is int]
    assert len(keyed) >= 16
    assert [name for name in keyed if "AUTOINCREMENT" not in schema[name]] == []
    assert all(SQLModel.metadata.tables[name].dialect_options["sqlite"]["autoincrement"] for name in keyed)
