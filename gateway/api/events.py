"""`GET /api/v1/events`: the caller's studio's events as Server-Sent Events (docs/api.md#live-events).

Each event is `id: <its number>`, `event: <its type>`, `data: <the object of gateway/eventlog.py>`.
A client that reconnects sends the last id it got (`Last-Event-ID`, or `?last_event_id=` where
it cannot set headers) and gets every event after it, none missing, none twice: the numbers
are per studio and without gaps. An id the log cannot continue from (older than the 24 hours
kept, from the future, not a number) gets one `reset` event instead, whose id is the newest:
the client reloads what it shows and goes on from there. Without an id, the stream starts now.

Every GATEWAY_EVENTS_HEARTBEAT seconds a comment line keeps proxies from closing an idle
stream, and the credential is checked again: a revoked token, a disconnected member or a
deleted studio ends the stream (api/auth.py recheck_caller). The same `caller` dependency as
every route authenticates it; this route also takes the pages' session cookie in place of a
bearer token (api/auth.py session_read), which is how the inbox page listens. Support is refused (403):
the stream is not one of its read routes.

Left out of the OpenAPI document (`include_in_schema=False`): a stream has no response schema,
and schema-driven test clients would wait on it forever; docs/api.md describes it instead.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy import Connection, select

from gateway.access.studios import Caller
from gateway.api.auth import recheck_caller, session_read
from gateway.api.event_hub import EventHub, Subscriber, frame, read
from gateway.eventlog import Event, events_after, resume_point
from gateway.metrics import SSE_CONNECTIONS
from gateway.store.tables import STUDIO

STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # nginx: pass each event at once


def event_hub(state: State) -> EventHub:
    """The process's hub, made on the first stream (its task runs on the serving loop)."""
    hub = state.get("event_hub")
    if hub is None:
        hub = state.event_hub = EventHub(state.engine, state.get("loop_reader"),
                                         state.settings.events_poll_interval)
    return hub


@get("/api/v1/events", include_in_schema=False, opt=session_read())
async def events_stream(
    request: Request, state: State, caller: NamedDependency[Caller],
    last_event_id: Annotated[str | None, QueryParameter(max_length=40)] = None,
) -> Stream:
    """The studio's events from the caller's last one on (see the module's docstring)."""
    last = request.headers.get("last-event-id") or last_event_id
    hub = event_hub(state)
    sub = hub.subscribe(caller.studio_id, 0)  # before reading where to start: nothing can slip by

    def start(conn: Connection) -> tuple[int, bool, str]:
        begin, reset = resume_point(conn, caller.studio_id, last)
        slug = conn.execute(select(STUDIO.c.slug).where(STUDIO.c.id == caller.studio_id)).scalar_one()
        return begin, reset, slug

    try:
        begin, reset, slug = await read(state.engine, state.get("loop_reader"), start)
    except BaseException:
        hub.unsubscribe(sub)
        raise
    sub.last = sub.target = begin
    sub.frames = [f for f in sub.frames if f[0] > begin]
    return Stream(_stream(request, state, caller, hub, sub, reset, slug), media_type="text/event-stream",
                  headers=STREAM_HEADERS)


async def _stream(request: Request, state: State, caller: Caller, hub: EventHub, sub: Subscriber,
                  reset: bool, slug: str) -> AsyncIterator[bytes]:
    beat = state.settings.events_heartbeat
    gauge = SSE_CONNECTIONS.labels("events")
    gauge.inc()
    try:
        yield b"retry: 3000\n\n" if not reset else (
            f"retry: 3000\nid: {sub.last}\nevent: reset\ndata: "
            f"{json.dumps({'id': sub.last, 'type': 'reset', 'studio': slug}, separators=(',', ':'))}\n\n").encode()
        sub.wake.set()  # catch up first: anything after `last` already in the log
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + beat
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps the wait in a new task, for every
                # stream at every event (bench/sse_fanout.py: 200 streams woken at once).
                async with asyncio.timeout_at(next_beat):
                    await sub.wake.wait()
            except TimeoutError:
                if not await recheck_caller(request, caller):
                    return
                next_beat = loop.time() + beat
                yield b": heartbeat\n\n"
                continue
            if hub.closing:
                return
            sub.wake.clear()
            chunk = b"".join(sub.take())
            while sub.last < sub.target:  # joined between two polls, or fell behind: read the rest
                missing = await read(state.engine, state.get("loop_reader"), partial(
                    _missing, studio_id=caller.studio_id, after=sub.last, upto=sub.target))
                if not missing:
                    break
                chunk += b"".join(frame(event) for event in missing)
                sub.last = missing[-1].seq
            if chunk:
                yield chunk
    finally:
        gauge.dec()
        hub.unsubscribe(sub)


def _missing(conn: Connection, *, studio_id: int, after: int, upto: int) -> list[Event]:
    return events_after(conn, studio_id, after, upto)
