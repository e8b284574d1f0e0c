"""The studio's event log and its live stream, GET /api/v1/events: real SMTP in, real HTTP
streaming out (httpx), a real relay sink, SQLite and PostgreSQL.

Heartbeats (and so the credential checks) come every 0.3 s here instead of 15 s.
"""
from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from gateway.eventlog import events_after, lock_counters, record
from gateway.lifecycle.purge import purge
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import CONVERSATION, STUDIO_EVENT
from tests.access import connect_member, held_message, open_conversation
from tests.conftest import RunningGateway, StudioInfo, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.relay_sink import RelaySink
from tests.sse import EventReader
from tests.test_outbound import send_due, sink  # noqa: F401  (the relay sink fixture)

BEAT = 0.3


@pytest.fixture
def live(tmp_path: Path, database_url: str, sink: RelaySink) -> Iterator[RunningGateway]:
    running = start_gateway(make_settings(tmp_path, database_url, smtp_relay_url=sink.url, events_heartbeat=BEAT))
    yield running
    running.stop()


def stream(gw: RunningGateway, studio: StudioInfo, **kwargs: Any) -> EventReader:
    reader = EventReader(gw.base_url, studio.token, **kwargs)
    assert reader.status == 200
    gw.clients.append(_Closer(reader))  # type: ignore[arg-type]
    return reader


class _Closer:
    """Closes a reader with the gateway's HTTP clients (RunningGateway.stop)."""

    def __init__(self, reader: EventReader) -> None:
        self.reader = reader

    def close(self) -> None:
        self.reader.close()


def inquiry(gw: RunningGateway, studio: StudioInfo) -> str:
    mid = new_id()
    assert gw.send(make_mail(message_id=mid), studio.address).code == 250
    gw.process()
    return mid


def test_an_smtp_inquiry_appears_on_an_open_stream_as_message_created(live: RunningGateway) -> None:
    studio = live.add_studio("inkwell")
    reader = stream(live, studio)
    inquiry(live, studio)
    event = reader.next()
    data = event["data"]
    conversation = live.api(studio.token).get("/api/v1/conversations").json()["items"][0]
    assert event["event"] == "message.created" and event["id"] == "1"
    assert data["id"] == 1 and data["type"] == "message.created" and data["studio"] == "inkwell"
    assert data["conversation_id"] == conversation["id"] and data["direction"] == "inbound"
    assert isinstance(data["message_id"], int) and data["created_at"].endswith("Z")
    assert reader.heartbeats == 0 or reader.heartbeats >= 1  # comment lines are not events
    assert reader.nothing_more()


def test_a_reply_is_message_created_then_delivery_updated_once_the_relay_took_it(
        live: RunningGateway, sink: RelaySink) -> None:
    studio = live.add_studio("inkwell")
    inquiry(live, studio)
    conversation_id = live.api(studio.token).get("/api/v1/conversations").json()["items"][0]["id"]
    reader = stream(live, studio)
    answer = live.api(studio.token).post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": "Gern!"})
    assert answer.status_code == 202
    created = reader.next()["data"]
    assert created["type"] == "message.created" and created["direction"] == "outbound"
    assert created["message_id"] == answer.json()["id"] and created["conversation_id"] == conversation_id
    assert reader.nothing_more()  # not delivered before the relay has it
    assert send_due(live) == 1 and len(sink.received) == 1
    delivered = reader.next()["data"]
    assert delivered["type"] == "delivery.updated" and delivered["delivery"] == "sent"
    assert delivered["message_id"] == created["message_id"] and delivered["id"] == created["id"] + 1
    assert isinstance(delivered["job_id"], int)


def test_conversation_changes_and_held_mail_are_events(live: RunningGateway) -> None:
    studio = live.add_studio("inkwell")
    mail = open_conversation(live, studio)
    reader = stream(live, studio)
    api, cid = live.api(studio.token), mail.conversation_id
    held_id = held_message(live, studio, mail.guest_message_id)
    assert api.post(f"/api/v1/conversations/{cid}/read").status_code == 200
    assert api.post(f"/api/v1/conversations/{cid}/close").status_code == 200
    assert api.post(f"/api/v1/conversations/{cid}/reopen").status_code == 200
    assert api.post(f"/api/v1/held/{held_id}/accept").status_code == 200
    assert api.delete(f"/api/v1/conversations/{cid}").status_code in (200, 204)
    got = [e["data"] for e in reader.until(6)]
    assert got[0] == got[0] | {"type": "held.created", "conversation_id": cid, "message_id": held_id}
    assert [(e["type"], e.get("change")) for e in got[1:]] == [
        ("conversation.updated", "read"), ("conversation.updated", "closed"), ("conversation.updated", "reopened"),
        ("conversation.updated", "held_accepted"), ("conversation.updated", "deleted")]
    assert [e["id"] for e in got] == list(range(got[0]["id"], got[0]["id"] + 6))


def test_resuming_with_last_event_id_gets_what_happened_while_away(live: RunningGateway) -> None:
    studio = live.add_studio("inkwell")
    reader = stream(live, studio)
    inquiry(live, studio)
    first = reader.next()
    reader.close()
    for _ in range(3):  # while nobody listens
        inquiry(live, studio)
    by_header = stream(live, studio, last_event_id=first["id"])
    assert [e["id"] for e in by_header.until(3)] == ["2", "3", "4"]
    by_query = stream(live, studio, query={"last_event_id": "3"})
    assert [e["id"] for e in by_query.until(1)] == ["4"]
    inquiry(live, studio)  # and both go on live
    assert by_header.next()["id"] == "5" and by_query.next()["id"] == "5"
    assert by_header.nothing_more() and by_query.nothing_more()


def test_an_id_older_than_the_retention_or_unknown_gets_a_reset(live: RunningGateway) -> None:
    studio = live.add_studio("inkwell")
    for _ in range(3):
        inquiry(live, studio)
    with write_tx(live.engine) as conn:  # the first two were written a day and more ago
        conn.execute(update(STUDIO_EVENT).where(STUDIO_EVENT.c.seq <= 2).values(
            created_at=utcnow() - timedelta(hours=25)))
    purge(live.engine, live.settings)  # the worker's periodic purge drops them
    with read_tx(live.engine) as conn:
        assert [e.seq for e in events_after(conn, studio.id, 0, 10)] == [3]
    for last in ("99", "banana", "1"):  # from the future, not a number, too old
        reader = stream(live, studio, last_event_id=last)
        reset = reader.next()
        assert reset["event"] == "reset" and reset["id"] == "3"
        assert reset["data"] == {"id": 3, "type": "reset", "studio": "inkwell"}
    inquiry(live, studio)
    assert reader.next()["id"] == "4"  # after the reset it goes on live
    fine = stream(live, studio, last_event_id="2")  # 3 and 4 are kept: no reset
    assert [e["id"] for e in fine.until(2)] == ["3", "4"]


def test_revoking_the_token_or_disconnecting_the_member_closes_the_stream(live: RunningGateway) -> None:
    studio = live.add_studio("inkwell")
    api = live.api(studio.token)
    second = api.post("/api/v1/tokens", json={"name": "phone"}).json()
    reader = EventReader(live.base_url, second["token"])
    assert reader.status == 200
    assert api.delete(f"/api/v1/tokens/{second['id']}").status_code == 204
    assert reader.ended.wait(10), "the stream stayed open after its token was revoked"
    profile_id, member_token = connect_member(live, studio)
    by_member = EventReader(live.base_url, member_token)
    assert by_member.status == 200
    assert api.delete(f"/api/v1/profiles/{profile_id}").status_code == 204
    assert by_member.ended.wait(10), "the stream stayed open after its member was disconnected"
    still = stream(live, studio)  # the owner's own stream is not affected
    inquiry(live, studio)
    assert still.next()["data"]["type"] == "message.created"


def test_another_studios_events_never_appear(live: RunningGateway) -> None:
    inkwell, blackrose = live.add_studio("inkwell"), live.add_studio("blackrose")
    before = open_streams()
    ours = stream(live, inkwell)
    theirs = stream(live, blackrose, last_event_id="0")
    assert streams_become(before + 2)  # the /metrics gauge of this process
    inquiry(live, blackrose)
    inquiry(live, inkwell)
    mine = ours.next()["data"]
    assert mine["studio"] == "inkwell" and mine["id"] == 1
    other = theirs.next()["data"]
    assert other["studio"] == "blackrose" and other["id"] == 1
    assert ours.nothing_more() and theirs.nothing_more()
    assert EventReader(live.base_url, "gw_not_a_token").status == 401
    ours.close()
    assert streams_become(before + 1)


def open_streams() -> float:
    return REGISTRY.get_sample_value("gateway_sse_connections", {"stream": "events"}) or 0.0


def streams_become(count: float, timeout: float = 10) -> bool:
    """Whether the gauge reaches `count` in time: a stream counts from its first bytes on."""
    deadline = time.monotonic() + timeout
    while open_streams() != count and time.monotonic() < deadline:
        time.sleep(0.02)
    return open_streams() == count


def test_concurrent_writers_leave_no_gap_and_readers_see_commit_order(
        tmp_path: Path, database_url: str) -> None:
    """Many transactions write one studio's events at once, each doing other work around its
    event; a reader polling meanwhile never sees a number before all below it, and at the end
    the numbers are exactly 1..N."""
    running = start_gateway(make_settings(tmp_path, database_url), roles=("web",))
    try:
        studio = running.add_studio("inkwell")
        other = running.add_studio("blackrose")
        writers, each = 8, 25
        failures: list[BaseException] = []
        done = threading.Event()
        seen: list[int] = []

        def write(index: int) -> None:
            rng = random.Random(index)
            try:
                for n in range(each):
                    try:
                        with write_tx(running.engine) as conn:
                            conn.execute(select(CONVERSATION.c.id).limit(1)).all()
                            both = rng.random() < 0.5  # another studio's event too, before or after
                            ids = [studio.id, other.id] if rng.random() < 0.5 else [other.id, studio.id]
                            if both:
                                lock_counters(conn, ids)  # as a processor chunk does: no deadlock
                            for studio_id in ids if both else [studio.id]:
                                record(conn, studio_id, "conversation.updated", utcnow(), conversation_id=n)
                            conn.execute(select(CONVERSATION.c.id).limit(1)).all()
                            if rng.random() < 0.2:
                                raise _Undo()  # a rolled-back change leaves no event and no hole
                    except _Undo:
                        pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        def read() -> None:
            last, final = 0, False
            while not final:
                final = done.is_set()  # one more look after the writers have finished
                with read_tx(running.engine) as conn:
                    batch = events_after(conn, studio.id, last, 10 ** 9)
                for event in batch:
                    assert event.seq == last + 1, f"saw {event.seq} after {last}"
                    last = event.seq
                    seen.append(event.seq)

        reader = threading.Thread(target=lambda: _catch(read, failures))
        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        reader.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        done.set()
        reader.join(60)
        assert not failures, failures
        with read_tx(running.engine) as conn:
            numbers = [e.seq for e in events_after(conn, studio.id, 0, 10 ** 9, limit=10 ** 6)]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > writers * each // 2
        assert seen == numbers
    finally:
        running.stop()


class _Undo(Exception):
    pass


def _catch(work: Any, failures: list[BaseException]) -> None:
    try:
        work()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        failures.append(exc)


def test_a_change_made_through_one_web_process_reaches_the_streams_of_another(
        tmp_path: Path, database_url: str) -> None:
    """Two web servers on one database, each with its own app and hub, as two `gateway web`
    processes are: the log is their only channel."""
    first = start_gateway(make_settings(tmp_path / "a", database_url, events_heartbeat=BEAT))
    second = start_gateway(make_settings(tmp_path / "b", database_url, events_heartbeat=BEAT), roles=("web",))
    try:
        studio = first.add_studio("inkwell")
        inquiry(first, studio)
        reader = stream(second, studio, last_event_id="1")
        [conversation] = first.api(studio.token).get("/api/v1/conversations").json()["items"]
        assert first.api(studio.token).post(f"/api/v1/conversations/{conversation['id']}/close").status_code == 200
        event = reader.next()["data"]
        assert event == event | {"id": 2, "type": "conversation.updated", "change": "closed",
                                 "conversation_id": conversation["id"]}
    finally:
        second.stop()
        first.stop()
