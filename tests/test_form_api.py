"""The studio's inquiry form over HTTP: definitions and versions, and what a post becomes.

A valid post is an inquiry (conversation `form`, the answers under their labels, the images
as attachments, a confirmation in the outbox that echoes none of the guest's words); bad
answers come back with errors and nothing stored; bots (honeypot, too fast) are told "thanks"
and nothing is stored; double posts make one conversation; limits hold.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select

from gateway.forms import versions
from gateway.forms.submit import answers_text
from gateway.settings import Settings
from gateway.store.db import read_tx
from gateway.store.blobs import sha256_hex
from gateway.store.tables import BLOB, CONVERSATION, FORM_SUBMISSION, MESSAGE, OUTBOUND_JOB, STUDIO_EVENT
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.form_posts import JPEG, PNG, answers, issued, post, solved
from tests.test_api_tokens import add_member

TWO_FIELDS = {"fields": [
    {"key": "email", "type": "email", "required": True, "label": {"de": "E-Mail", "en": "Email"}},
    {"key": "motif", "type": "short_text", "required": True, "label": {"de": "Motiv", "en": "Motif"}},
]}


def _count(gw: RunningGateway, table: Any) -> int:
    with read_tx(gw.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def test_a_studio_starts_with_the_default_and_every_save_is_a_version(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    first = api.get("/api/v1/form").json()
    assert first["version"] == 0 and [f["key"] for f in first["definition"]["fields"]] == [
        "name", "email", "idea", "placement", "size", "images", "dates"]
    saved = api.put("/api/v1/form", json=TWO_FIELDS)
    assert saved.status_code == 200 and saved.json()["version"] == 1
    again = api.put("/api/v1/form", json=TWO_FIELDS).json()
    assert again["version"] == 2
    assert api.get("/api/v1/form").json()["definition"] == TWO_FIELDS
    assert [v["version"] for v in api.get("/api/v1/form/versions").json()["items"]] == [2, 1, 0]
    seen, cursor = [], None  # paged like every list: items + next_cursor, the default last
    while True:
        page = api.get("/api/v1/form/versions", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen += [v["version"] for v in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [2, 1, 0]
    _, member = add_member(gw, studio, "artist@inkwell.example")
    assert gw.api(member).put("/api/v1/form", json=TWO_FIELDS).status_code == 403
    assert gw.api(member).get("/api/v1/form").json()["version"] == 2
    other = gw.add_studio("rival")
    assert gw.api(other.token).get("/api/v1/form").json()["version"] == 0


def _fields(n: int) -> list[dict[str, Any]]:
    return [{"key": "email", "type": "email", "required": True, "label": "Email"}] + [
        {"key": f"f{i}", "type": "short_text", "label": f"F{i}"} for i in range(n - 1)]


@pytest.mark.parametrize("definition, problem", [
    ({"fields": [{"key": "email", "type": "email", "required": True, "label": "E"},
                 {"key": "x", "type": "colour", "label": "X"}]}, "unknown type 'colour'"),
    ({"fields": [{"key": "email", "type": "email", "required": True, "label": "E"},
                 {"key": "email", "type": "short_text", "label": "X"}]}, "duplicate key 'email'"),
    ({"fields": [{"key": "name", "type": "name", "label": "N"}]}, "needs a field of type `email`"),
    ({"fields": _fields(51)}, "at most 50 fields"),
    ({"fields": [{"key": "email", "type": "email", "required": True, "label": "E"},
                 {"key": "style", "type": "select", "label": "S"}]}, "needs 1-100 options"),
])
def test_an_invalid_definition_is_422_naming_the_problem(gw: RunningGateway, definition: dict[str, Any],
                                                          problem: str) -> None:
    studio = gw.add_studio("inkwell")
    answer = gw.api(studio.token).put("/api/v1/form", json=definition)
    assert answer.status_code == 422
    body = answer.json()
    assert problem in body["detail"] and body["code"] == "invalid_form"
    assert gw.api(studio.token).get("/api/v1/form").json()["version"] == 0


def test_a_submission_is_an_inquiry_with_answers_images_and_a_confirmation(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell", name="Inkwell Tattoo")
    web = gw.api(None)
    answer = post(web, "inkwell", answers(_issued=issued(studio.id), altcha=solved(web, "inkwell")),
                  [("rose.png", PNG), ("../x.exe", JPEG)])
    assert answer.status_code == 200, answer.text
    assert "Inkwell Tattoo" in answer.text and "content-security-policy" in answer.headers
    assert "frame-ancestors" not in answer.headers["content-security-policy"]
    api = gw.api(studio.token)
    [conversation] = api.get("/api/v1/conversations").json()["items"]
    assert conversation["guest"]["email"] == "lena@example.org"
    detail = api.get(f"/api/v1/conversations/{conversation['id']}").json()
    inquiry, confirmation = detail["messages"]
    assert inquiry["thread_rule"] == "form" and inquiry["from"]["email"] == "lena@example.org"
    # The studio's language (German by default), every answer under its label.
    for label, value in (("Name", "Lena Rose"), ("Was möchtest du?", "A small rose, fine line"),
                         ("Körperstelle", "inner forearm"), ("Größe in cm", "8"), ("Wunschtermine", "Fridays")):
        assert f"{label}\n{value}" in inquiry["text"]
    assert [(a["filename"], a["content_type"]) for a in inquiry["attachments"]] == [
        ("rose.png", "image/png"), ("x.jpg", "image/jpeg")]
    assert confirmation["direction"] == "outbound" and confirmation["auto_kind"] == "form_confirmation"
    assert confirmation["to"][0]["email"] == "lena@example.org"
    for theirs in ("Lena", "rose", "forearm", "Fridays"):
        assert theirs not in confirmation["text"] and theirs not in confirmation["subject"]
    assert "Körperstelle" in confirmation["text"] or "Placement" in confirmation["text"]
    with read_tx(gw.engine) as conn:
        stored = conn.execute(select(FORM_SUBMISSION)).one()
        assert stored.form_version == 0 and stored.consent_at is not None
        assert conn.execute(select(func.count()).select_from(OUTBOUND_JOB)).scalar() == 1
        # The live inbox (and the studio's webhooks) hear of the inquiry, then of the confirmation.
        rows = conn.execute(select(STUDIO_EVENT).where(STUDIO_EVENT.c.studio_id == studio.id)
                            .order_by(STUDIO_EVENT.c.seq)).all()
        events = [(e.type, json.loads(e.data)) for e in rows]
        # Both taken in one statement (eventlog.record_many): numbered one after the other, no gap.
        assert [e.seq for e in rows] == list(range(rows[0].seq, rows[0].seq + len(rows)))
        assert events[:2] == [
            ("message.created", {"conversation_id": conversation["id"], "message_id": inquiry["id"], "direction": "inbound"}),
            ("message.created", {"conversation_id": conversation["id"], "message_id": confirmation["id"], "direction": "outbound"})]
    # A second inquiry the same day: a new conversation, but no second confirmation.
    assert post(web, "inkwell", answers(_issued=issued(studio.id), idea="A lion")).status_code == 200
    assert _count(gw, CONVERSATION) == 2 and _count(gw, OUTBOUND_JOB) == 1
    # Each conversation counts the messages it has, and was last active when its last one came.
    with read_tx(gw.engine) as conn:
        rows = conn.execute(select(CONVERSATION.c.id, CONVERSATION.c.message_count, CONVERSATION.c.last_message_at)
                            .order_by(CONVERSATION.c.id)).all()
        for row in rows:
            received = conn.execute(select(MESSAGE.c.received_at).where(MESSAGE.c.conversation_id == row.id)).scalars().all()
            assert row.message_count == len(received) and row.last_message_at == max(received)
    assert [row.message_count for row in rows] == [2, 1]


def test_an_old_submission_reads_with_its_own_version(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    assert api.put("/api/v1/form", json=TWO_FIELDS).json()["version"] == 1
    assert post(gw.api(None), "inkwell", {"email": "lena@example.org", "motif": "Rose", "_consent": "yes",
                                          "_issued": issued(studio.id)}).status_code == 200
    renamed = json.loads(json.dumps(TWO_FIELDS).replace('"Motiv"', '"Bildidee"'))
    renamed["fields"][1]["key"] = "idea"
    assert api.put("/api/v1/form", json=renamed).json()["version"] == 2
    with read_tx(gw.engine) as conn:
        stored = conn.execute(select(FORM_SUBMISSION.c.form_version, FORM_SUBMISSION.c.answers_json)).one()
        own = versions.at(conn, studio.id, stored.form_version)
        now = versions.current(conn, studio.id)
    assert stored.form_version == 1 and own is not None and now.version == 2
    values = json.loads(stored.answers_json)["values"]
    assert answers_text(own.definition, values, {}, "de") == "E-Mail\nlena@example.org\n\nMotiv\nRose\n"
    [conversation] = api.get("/api/v1/conversations").json()["items"]
    text = api.get(f"/api/v1/conversations/{conversation['id']}").json()["messages"][0]["text"]
    assert "Motiv\nRose" in text and "Bildidee" not in text


def test_errors_come_back_with_the_answers_kept_and_nothing_stored(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    answer = post(gw.api(None), "inkwell", answers(_issued=issued(studio.id), email="not an address", idea=None,
                                                   _consent=None), [("notes.png", b"%PDF-1.4 not an image")],
                  **{"Accept-Language": "en-GB,en;q=0.9,de;q=0.5"})
    assert answer.status_code == 422
    page = answer.text
    assert 'value="Lena Rose"' in page and 'value="not an address"' in page and 'value="inner forearm"' in page
    assert "Please enter a valid email address." in page and "Please fill this in." in page
    assert "notes.png is not an image" in page and "Without your consent" in page
    assert _count(gw, CONVERSATION) == 0 and _count(gw, FORM_SUBMISSION) == 0
    german = post(gw.api(None), "inkwell", answers(_issued=issued(studio.id), email=""),
                  **{"Accept-Language": "de-AT"})
    assert german.status_code == 422 and "Bitte ausfüllen." in german.text


def test_the_honeypot_and_a_too_fast_post_are_thanked_and_dropped(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    web = gw.api(None)
    trapped = post(web, "inkwell", answers(_issued=issued(studio.id), _website="http://spam.example"))
    hasty = post(web, "inkwell", answers(_issued=issued(studio.id, seconds_ago=0.5)))
    for answer in (trapped, hasty):
        assert answer.status_code == 200 and 'role="status"' in answer.text
    assert _count(gw, CONVERSATION) == 0 and _count(gw, MESSAGE) == 0


def test_a_double_submit_makes_one_conversation(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    web = gw.api(None)
    token = issued(studio.id)
    for _ in range(3):
        assert post(web, "inkwell", answers(_issued=token), [("rose.png", PNG)]).status_code == 200
    assert _count(gw, CONVERSATION) == 1 and _count(gw, FORM_SUBMISSION) == 1


@pytest.fixture
def strict(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    settings: Settings = make_settings(tmp_path, database_url, form_per_address_per_day=2, form_per_ip_per_hour=4,
                                       form_bare_per_ip_per_hour=3, form_daily_cap=5)
    running = start_gateway(settings, roles=("web",))
    yield running
    running.stop()


def test_rate_limits_per_address_per_ip_and_the_daily_cap_hold(strict: RunningGateway) -> None:
    studio = strict.add_studio("inkwell")
    web = strict.api(None)
    codes = [post(web, "inkwell", answers(_issued=issued(studio.id), altcha=solved(web, "inkwell"))).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    limited = post(web, "inkwell", answers(_issued=issued(studio.id), altcha=solved(web, "inkwell")))
    assert "try again later" in limited.text.lower() or "später" in limited.text
    assert int(limited.headers["retry-after"]) > 0
    # Another address from the same client: the per-IP budget (4) has two left.
    codes = [post(web, "inkwell", answers(_issued=issued(studio.id), altcha=solved(web, "inkwell"),
                                          email=f"g{i}@example.org")).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    assert _count(strict, CONVERSATION) == 4


def test_a_bare_post_gets_stricter_limits_and_an_echo_free_confirmation(strict: RunningGateway) -> None:
    studio = strict.add_studio("inkwell")
    web = strict.api(None)
    codes = [web.post("/f/inkwell", data=answers(email=f"b{i}@example.org")).status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]
    api = strict.api(studio.token)
    first = api.get("/api/v1/conversations").json()["items"][-1]
    confirmation = api.get(f"/api/v1/conversations/{first['id']}").json()["messages"][1]
    assert confirmation["auto_kind"] == "form_confirmation"
    assert "Körperstelle" not in confirmation["text"] and "Placement" not in confirmation["text"]


def test_the_public_form_json_and_unknown_studios(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    assert gw.api(studio.token).patch("/api/v1/studio", json={"privacy_url": "javascript:alert(1)"}).status_code == 400
    assert gw.api(studio.token).patch("/api/v1/studio", json={
        "privacy_url": "https://inkwell.example/datenschutz"}).json()["privacy_url"] == "https://inkwell.example/datenschutz"
    web = gw.api(None)
    answer = web.get("/f/inkwell/form.json", headers={"Origin": "https://inkwell.example", "Accept-Language": "en"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers
    body = answer.json()
    assert body["version"] == 0 and body["language"] == "en" and body["consent"]["privacy_url"].endswith("/datenschutz")
    page = web.get("/f/inkwell")
    assert page.status_code == 200 and 'href="https://inkwell.example/datenschutz"' in page.text
    assert "<script>" not in page.text and "frame-ancestors" not in page.headers["content-security-policy"]
    for path in ("/f/nobody", "/f/nobody/form.json"):
        assert web.get(path).status_code == 404
    assert web.post("/f/nobody", data=answers()).status_code == 404


def test_a_proof_of_work_solution_counts_once(strict: RunningGateway) -> None:
    """The same ALTCHA solution on a second post makes that post bare: the bare budget (3 per
    IP here) applies, and its confirmation echoes no label."""
    studio = strict.add_studio("inkwell")
    web = strict.api(None)
    solution = solved(web, "inkwell")
    first = post(web, "inkwell", answers(_issued=issued(studio.id), altcha=solution))
    second = post(web, "inkwell", answers(_issued=issued(studio.id), altcha=solution, email="other@example.org"))
    assert first.status_code == second.status_code == 200
    api = strict.api(studio.token)
    texts = {}
    for item in api.get("/api/v1/conversations").json()["items"]:
        messages = api.get(f"/api/v1/conversations/{item['id']}").json()["messages"]
        texts[item["guest"]["email"]] = messages[1]["text"]
    assert "Körperstelle" in texts["lena@example.org"] or "Placement" in texts["lena@example.org"]
    assert "Körperstelle" not in texts["other@example.org"] and "Placement" not in texts["other@example.org"]
    forged = post(web, "inkwell", answers(_issued=issued(studio.id), altcha="eyJub3QiOiAib3VycyJ9",
                                          email="third@example.org"))
    assert forged.status_code == 200
    # Bare budget per IP is 3: the reused and the forged solution used two of it.
    assert post(web, "inkwell", answers(email="fourth@example.org")).status_code == 200
    assert post(web, "inkwell", answers(email="fifth@example.org")).status_code == 429


def test_submissions_and_their_images_are_exported_and_erased_with_the_guest(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    web = gw.api(None)
    assert post(web, "inkwell", answers(_issued=issued(studio.id)), [("rose.png", PNG)]).status_code == 200
    assert post(web, "inkwell", answers(_issued=issued(studio.id), email="tom@example.net", name="Tom"),
                [("lion.jpg", JPEG)]).status_code == 200
    api = gw.api(studio.token)
    archive = zipfile.ZipFile(io.BytesIO(api.get("/api/v1/export").content))
    doc = json.loads(archive.read("export.json"))
    submissions = [s for c in doc["conversations"] for s in c["form_submissions"]]
    assert len(submissions) == 2 and json.loads(submissions[0]["answers_json"])["values"]["name"] == "Lena Rose"
    assert submissions[0]["consent_at"] and doc["form_versions"] == []
    assert PNG in [archive.read(n) for n in archive.namelist() if n.startswith("attachments/")]
    lena = next(c for c in api.get("/api/v1/conversations").json()["items"] if c["guest"]["email"] == "lena@example.org")
    assert api.post(f"/api/v1/guests/{lena['guest']['id']}/erase").status_code == 200
    with read_tx(gw.engine) as conn:
        left = conn.execute(select(FORM_SUBMISSION.c.answers_json)).scalars().all()
        assert len(left) == 1 and "Lena" not in left[0]
        assert conn.execute(select(func.count()).select_from(BLOB).where(BLOB.c.sha256 == sha256_hex(PNG))).scalar() == 0
        assert conn.execute(select(func.count()).select_from(BLOB).where(BLOB.c.sha256 == sha256_hex(JPEG))).scalar() == 1
