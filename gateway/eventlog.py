"""The studio's event log: what changed, numbered per studio without gaps, kept 24 hours.

The live stream (`GET /api/v1/events`, gateway/api/events.py) and, next, the studio's outgoing
webhooks send the same objects from this one log:

    {"id": 42, "type": "message.created", "studio": "atelier-rot", "created_at": "...Z",
     "conversation_id": 7, "message_id": 131}

Types and what they carry besides the envelope (`id`, `type`, `studio`, `created_at`):
- `message.created`: `conversation_id`, `message_id`, `direction` (`inbound` a guest's mail,
  `outbound` a studio reply or an acknowledgement);
- `held.created`: `conversation_id`, `message_id` (mail held for the studio to accept);
- `conversation.updated`: `conversation_id`, `change` (read, unread, closed, reopened, deleted,
  restored, held_accepted, held_rejected, message_deleted, message_restored, and for a guest's
  erasure erased (their conversation) and message_erased (their mail in another's)), `message_id`
  for the message changes;
- `delivery.updated`: `conversation_id`, `message_id`, `job_id`, `delivery` (sent, failed,
  retrying).

Written by `record` in the transaction that makes the change, so an event exists exactly when
its change committed. Numbers come from the studio's row in `studio_event_counter`, taken with
one upsert: its row lock orders the writers of one studio, so number n+1 is taken only once the
transaction that took n has ended (a rollback gives n back). A reader that sees n sees all
below it: `seq > last` misses nothing, which an autoincrement id read by `id > last` cannot
promise on PostgreSQL, where ids are taken at insert and committed in any order. The price is
that one studio's writers of events commit one after another; other studios are not touched.

A neutral layer between the domains (which record) and the contracts (events.py, whose
`Threaded` the reaction here turns into an event): inbound, outbound, inbox and lifecycle all
write here, and none of them may import another.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Connection, bindparam, delete, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.events import Chunk, Threaded
from gateway.settings import Settings
from gateway.store.db import DriverSQL, after_commit, bind_processor, transaction_state
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import STUDIO, STUDIO_EVENT, STUDIO_EVENT_COUNTER

MESSAGE_CREATED, HELD_CREATED = "message.created", "held.created"
CONVERSATION_UPDATED, DELIVERY_UPDATED = "conversation.updated", "delivery.updated"
TYPES = (MESSAGE_CREATED, CONVERSATION_UPDATED, DELIVERY_UPDATED, HELD_CREATED)
RETENTION = timedelta(hours=24)
DEFERRED = "eventlog.deferred"  # a Chunk memo key: see record_threaded


def _next_seq(dialect: Any) -> Prepared:
    """The studio's counter moved on by `count` numbers; the last of them."""
    counter = STUDIO_EVENT_COUNTER
    insert = dialect.insert(counter).values(studio_id=bindparam("studio_id"), seq=bindparam("count"))
    return Prepared(insert.on_conflict_do_update(index_elements=[counter.c.studio_id],
                                                 set_={"seq": counter.c.seq + bindparam("count")})
                    .returning(counter.c.seq))


_NEXT = {"postgresql": _next_seq(postgresql), "sqlite": _next_seq(sqlite)}
_EVENT_COLUMNS = ("studio_id", "seq", "type", "created_at", "data")
_INSERT = Prepared(STUDIO_EVENT.insert().values({name: bindparam(name) for name in _EVENT_COLUMNS}))
# Several events in one INSERT of as many rows (record_many), built once per row count: psycopg's
# executemany of two rows (its pipeline and Sync) waited several times as long as one statement.
_INSERT_ROWS: dict[int, Prepared] = {1: _INSERT}


def _insert_rows(count: int) -> Prepared:
    prepared = _INSERT_ROWS.get(count)
    if prepared is None:
        rows = [{name: bindparam(f"{name}_{n}", type_=STUDIO_EVENT.c[name].type) for name in _EVENT_COLUMNS}
                for n in range(count)]
        prepared = _INSERT_ROWS[count] = Prepared(STUDIO_EVENT.insert().values(rows))
    return prepared


# PostgreSQL: the counter's upsert and the event's insert in one statement, one round trip
# instead of two; every threaded message and every reply writes one (SQLite has no INSERT in a
# WITH clause, and its statements cost no round trip).
_RECORD_PG = DriverSQL(
    "WITH next AS (INSERT INTO studio_event_counter (studio_id, seq) VALUES (?, 1) "
    "ON CONFLICT (studio_id) DO UPDATE SET seq = studio_event_counter.seq + 1 RETURNING seq) "
    "INSERT INTO studio_event (studio_id, seq, type, created_at, data) "
    "SELECT ?, next.seq, ?, ?, ? FROM next RETURNING seq")


def record(conn: Connection, studio_id: int, type_: str, now: datetime, **ids: int | str | None) -> int:
    """Write one event in the caller's transaction; its number. Holds the studio's counter row
    until that transaction ends: call it late in short transactions where that is easy."""
    if conn.dialect.name == "postgresql":
        flush(conn)  # events queued earlier in the transaction keep their lower numbers
        if type_ not in TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        when = bind_processor(conn, STUDIO_EVENT.c.created_at)(now)
        seq = int(_RECORD_PG(conn, (studio_id, studio_id, type_, when, _data(ids))).fetchone()[0])
        _tell_at_commit(conn)
        return seq
    return record_many(conn, studio_id, [(type_, now, ids)])[0]


def record_many(conn: Connection, studio_id: int,
                events: list[tuple[str, datetime, dict[str, int | str | None]]]) -> list[int]:
    """Several events of one studio in the caller's transaction, numbered in the order given;
    their numbers. One counter statement and one insert for all of them (on PostgreSQL one
    statement): an inquiry form post writes two (its message and the confirmation), and on
    PostgreSQL each statement is a round trip of the group commit (bench/form_submit.py)."""
    for type_, _, _ in events:
        if type_ not in TYPES:
            raise ValueError(f"unknown event type {type_!r}")
    if not events:
        return []
    flush(conn)
    if conn.dialect.name == "postgresql":
        seqs = _record_rows_pg(conn, studio_id, events)
        _tell_at_commit(conn)
        return seqs
    last = _NEXT[conn.dialect.name].execute(conn, studio_id=studio_id, count=len(events)).fetchone()[0]
    first = last - len(events) + 1
    if len(events) == 1:
        type_, now, ids = events[0]
        _INSERT.execute(conn, studio_id=studio_id, seq=last, type=type_, created_at=now, data=_data(ids))
    else:
        values: dict[str, Any] = {}
        for n, (type_, now, ids) in enumerate(events):
            values.update({f"studio_id_{n}": studio_id, f"seq_{n}": first + n, f"type_{n}": type_,
                           f"created_at_{n}": now, f"data_{n}": _data(ids)})
        _insert_rows(len(events)).execute(conn, **values)
    _tell_at_commit(conn)
    return list(range(first, last + 1))


def _record_rows_pg(conn: Connection, studio_id: int,
                    events: list[tuple[str, datetime, dict[str, int | str | None]]]) -> list[int]:
    """PostgreSQL: the counter moved on by len(events) and their rows, in one statement (as
    _RECORD_PG for one): the processor writes a chunk's events so, one round trip for all, and
    an inquiry form post its two."""
    when = bind_processor(conn, STUDIO_EVENT.c.created_at)
    count = len(events)
    params: list[Any] = [studio_id, count, count, studio_id, count]
    for n, (type_, now, ids) in enumerate(events, start=1):
        params.extend((n, type_, when(now), _data(ids)))
    return sorted(int(row[0]) for row in _rows_statement(count)(conn, params).fetchall())


def _rows_statement(count: int) -> DriverSQL:
    """The statement for `count` events, built once per count."""
    found = _RECORD_ROWS_PG.get(count)
    if found is None:
        rows = ", ".join(["(?::integer, ?::varchar, ?::timestamptz, ?::text)"] * count)
        found = _RECORD_ROWS_PG[count] = DriverSQL(
            "WITH next AS (INSERT INTO studio_event_counter (studio_id, seq) VALUES (?, ?) "
            "ON CONFLICT (studio_id) DO UPDATE SET seq = studio_event_counter.seq + ? RETURNING seq) "
            "INSERT INTO studio_event (studio_id, seq, type, created_at, data) "
            "SELECT ?, next.seq - ? + row_values.n, row_values.type, row_values.created_at, row_values.data "
            f"FROM next, (VALUES {rows}) AS row_values (n, type, created_at, data) RETURNING seq")
    return found


_RECORD_ROWS_PG: dict[int, DriverSQL] = {}


# PostgreSQL: events queued by `record_later`, per transaction (gateway/store/db.transaction_state).
_QUEUED = "gateway.eventlog.queued"


@dataclass
class _Queue:
    events: dict[int, list[tuple[str, datetime, dict[str, int | str | None]]]] = field(default_factory=dict)
    studios: set[int] = field(default_factory=set)  # whose counters the transaction will take
    locked: set[int] = field(default_factory=set)


def record_later(conn: Connection, studio_id: int, type_: str, now: datetime, *, studios: set[int] | None = None,
                 **ids: int | str | None) -> None:
    """Queue an event for `flush`, which writes the transaction's queued events of each studio
    in one statement: a processor chunk's sixteen events cost one round trip instead of
    sixteen, and the studio's counter row is taken only then, so others writing the studio's
    events (a reply, another processor) wait for the end of the chunk, not all of it.
    `studios`: every studio the transaction may write events of; when there are several,
    their counters are taken together, in id order, before the first is written (see
    `lock_counters`). The caller must flush before committing; any other event recorded in the
    transaction flushes first, so numbers still follow the order of the changes. A rollback
    drops the queue. SQLite (no round trips, one writer) writes at once."""
    if type_ not in TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    if conn.dialect.name != "postgresql":
        record(conn, studio_id, type_, now, **ids)
        return
    queue = transaction_state(conn, _QUEUED, _Queue)
    queue.events.setdefault(studio_id, []).append((type_, now, ids))
    queue.studios.add(studio_id)
    queue.studios |= studios or set()


def flush(conn: Connection) -> None:
    """Write the events `record_later` queued in this transaction (none: no statement)."""
    queue = conn.info.get(_QUEUED)
    if queue is None or not queue.events:
        return
    events, queue.events = queue.events, {}
    waiting = queue.studios - queue.locked
    if waiting and (len(queue.studios) > 1 or queue.locked):
        lock_counters(conn, sorted(waiting))  # several counters: in id order, before writing any
    queue.locked |= queue.studios
    for studio_id in sorted(events):  # the counters' order, as lock_counters takes them
        rows = events[studio_id]
        if len(rows) == 1:
            type_, now, ids = rows[0]
            record(conn, studio_id, type_, now, **ids)
        else:
            record_many(conn, studio_id, rows)


def _data(ids: dict[str, int | str | None]) -> str:
    return json.dumps({k: v for k, v in ids.items() if v is not None}, separators=(",", ":"))


def _tell_at_commit(conn: Connection) -> None:
    if _listeners:
        after_commit(conn, "eventlog", _committed)


# This process's event hubs (gateway/api/event_hub.py), told as soon as a transaction that
# recorded events commits here: they read the log at once instead of at their next poll.
# Events written by other processes are still found by the poll alone.
_listeners: list[Callable[[], None]] = []


def listen(callback: Callable[[], None]) -> None:
    _listeners.append(callback)


def unlisten(callback: Callable[[], None]) -> None:
    if callback in _listeners:
        _listeners.remove(callback)


def _committed() -> None:
    for callback in list(_listeners):
        callback()


def _lock_row(dialect: Any) -> Prepared:
    counter = STUDIO_EVENT_COUNTER
    insert = dialect.insert(counter).values(studio_id=bindparam("studio_id"), seq=0)
    return Prepared(insert.on_conflict_do_update(index_elements=[counter.c.studio_id], set_={"seq": counter.c.seq}))


_LOCK = _lock_row(postgresql)


def lock_counters(conn: Connection, studio_ids: list[int]) -> None:
    """Take these studios' counter rows now, lowest id first (PostgreSQL; SQLite has one writer).

    A transaction that writes events of several studios takes their rows in the order its
    changes come; two such transactions taking two studios in opposite orders deadlock, and
    PostgreSQL aborts one of them after `deadlock_timeout`. Taken in one order up front, they
    queue instead."""
    if conn.dialect.name != "postgresql":
        return
    for studio_id in sorted(set(studio_ids)):
        _LOCK.execute(conn, studio_id=studio_id)


def record_threaded(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The reaction (gateway/events.py) that logs each filed guest message: shown, or held.

    A processor chunk holds mail for several studios, in the order it arrived: before its first
    event is written the chunk takes the counters of all the studios it knows of, in id order
    (`lock_counters`), so two processors never wait on each other crosswise.

    A caller that writes one studio's events at its end puts a list under DEFERRED in the
    chunk's memo: the event is appended there, for it to record with its own in one
    `record_many` (the inquiry form: its message's event and its confirmation's, one statement
    on PostgreSQL instead of four, bench/form_submit.py). Its number then comes after those of
    events other reactions record at once (none do for a form post)."""
    type_ = MESSAGE_CREATED if event.visible else HELD_CREATED
    ids: dict[str, int | str | None] = {"conversation_id": event.conversation_id, "message_id": event.message_id}
    if event.visible:
        ids["direction"] = "inbound"
    deferred = chunk.memo.get(DEFERRED)
    if deferred is not None:
        deferred.append((type_, utcnow(), ids))
        return
    known = {studio_id for studio_id in chunk.studio_ids.values() if studio_id is not None} | {event.studio_id}
    if chunk.batched:
        # A chunk rolled back whole on any failure queues its events for its end: one statement
        # for all of them on PostgreSQL, and the counters taken only then.
        if flush not in chunk.at_end:
            chunk.at_end.append(flush)
        record_later(conn, event.studio_id, type_, utcnow(), studios=known, **ids)
        return
    # A chunk redone with a savepoint per message writes each event inside its savepoint.
    locked: set[int] = chunk.memo.setdefault("eventlog.locked", set())
    if not known <= locked:
        lock_counters(conn, sorted(known - locked))
        locked |= known
    record(conn, event.studio_id, type_, utcnow(), **ids)


@dataclass(frozen=True)
class Event:
    seq: int
    type: str
    studio: str
    created_at: datetime
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The documented object: the envelope first, then the ids of what changed."""
        return {"id": self.seq, "type": self.type, "studio": self.studio,
                "created_at": self.created_at.isoformat().replace("+00:00", "Z"), **self.data}


_AFTER = (select(STUDIO_EVENT.c.seq, STUDIO_EVENT.c.type, STUDIO.c.slug, STUDIO_EVENT.c.created_at,
                 STUDIO_EVENT.c.data)
          .join(STUDIO, STUDIO.c.id == STUDIO_EVENT.c.studio_id)
          .where(STUDIO_EVENT.c.studio_id == bindparam("studio_id"), STUDIO_EVENT.c.seq > bindparam("after"),
                 STUDIO_EVENT.c.seq <= bindparam("upto"))
          .order_by(STUDIO_EVENT.c.seq).limit(bindparam("limit")))


def events_after(conn: Connection, studio_id: int, after: int, upto: int, limit: int = 500) -> list[Event]:
    """The studio's events numbered after `after` up to `upto`, oldest first, at most `limit`."""
    rows = conn.execute(_AFTER, {"studio_id": studio_id, "after": after, "upto": upto, "limit": limit})
    return [Event(r.seq, r.type, r.slug, r.created_at, json.loads(r.data)) for r in rows]


def current(conn: Connection, studio_ids: list[int]) -> dict[int, int]:
    """The last number taken by each of these studios (0 for one that has none yet)."""
    found = dict(conn.execute(select(STUDIO_EVENT_COUNTER.c.studio_id, STUDIO_EVENT_COUNTER.c.seq).where(
        STUDIO_EVENT_COUNTER.c.studio_id.in_(studio_ids))).all())
    return {studio_id: found.get(studio_id, 0) for studio_id in studio_ids}


def resume_point(conn: Connection, studio_id: int, last: str | None) -> tuple[int, bool]:
    """Where a stream that last saw `last` (Last-Event-ID) goes on: (number, reset).

    No `last`: from now on. A `last` whose successors are all still kept: right after it.
    Otherwise (not a number, from the future, or older than the 24 hours kept) the client
    missed something it cannot get back: from now on, with reset=True, and it reloads."""
    now_at = current(conn, [studio_id])[studio_id]
    if last is None or not last.strip():
        return now_at, False
    try:
        seen = int(last.strip())
    except ValueError:
        return now_at, True
    if seen < 0 or seen > now_at:
        return now_at, True
    if seen == now_at:
        return seen, False
    first = conn.execute(select(func.min(STUDIO_EVENT.c.seq)).where(
        STUDIO_EVENT.c.studio_id == studio_id, STUDIO_EVENT.c.seq > seen)).scalar()
    return (seen, False) if first == seen + 1 else (now_at, True)


def purge_events(conn: Connection, now: datetime) -> int:
    """Drop the events older than the 24 hours kept; how many. The counters stay: numbers are
    never reused, so an id from before the purge is recognised as too old."""
    cutoff = literal(now - RETENTION, STUDIO_EVENT.c.created_at.type)
    return conn.execute(delete(STUDIO_EVENT).where(STUDIO_EVENT.c.created_at < cutoff)).rowcount
