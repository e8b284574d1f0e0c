"""The web messenger's inbox page with 10,000 conversations: server time beside a do-nothing page.

    .venv/bin/python bench/web_inbox.py [--conversations N] [--requests R] [--database sqlite|postgres]

Both pages are served by the same Litestar app (the gateway's, with its pages mounted as
gateway/runtime.py mounts them) through Litestar's in-process test client, so the figure is
server time: routing, the session lookup, the list query with its snippets, the template, and
nothing of a network. The baseline is a route that returns a constant HTML string through the
same app. Requests alternate between them, so drift hits all alike. Target (issue 15):
p99 of the inbox under 3x the baseline's p99 — plus the baseline is tiny, so the absolute
figure is printed too. The conversation page (`GET /app/c/{id}` of the newest conversation, read
already after its first opening, one guest message) is timed in the same rotation and printed
beside it, without a target of its own. Bounded: at most --requests of each, and a deadline.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestar import MediaType, get  # noqa: E402
from litestar.testing import TestClient  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from gateway.access.studios import add_studio  # noqa: E402
from gateway.access.web_sessions import create_link, consume_link, recipients  # noqa: E402
from gateway.api.app import create_app  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.store.db import make_engine, migrate, write_tx  # noqa: E402
from gateway.store.models import utcnow  # noqa: E402
from gateway.store.tables import CONVERSATION, GUEST, MESSAGE  # noqa: E402
from gateway.web.pages import web_routes  # noqa: E402
from bench.lib.procs import throwaway_database  # noqa: E402

DEADLINE = 300.0
TARGET = 3.0


@get("/bench/noop", media_type=MediaType.HTML)
async def noop() -> str:
    return "<!doctype html><title>x</title><p>nothing"


def seed(engine: object, n: int) -> str:
    """A studio with n conversations (one guest message each); the owner's session cookie."""
    now = utcnow()
    with write_tx(engine) as conn:  # type: ignore[arg-type]
        studio_id, _ = add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        for start in range(0, n, 1000):
            batch = range(start, min(n, start + 1000))
            conn.execute(insert(GUEST), [{"studio_id": studio_id, "email": f"guest{i}@example.org",
                                          "name": f"Gast {i}", "created_at": now} for i in batch])
            guests = dict(conn.execute(select(GUEST.c.email, GUEST.c.id).where(GUEST.c.studio_id == studio_id)).all())
            conn.execute(insert(CONVERSATION), [{
                "studio_id": studio_id, "guest_id": guests[f"guest{i}@example.org"], "subject": f"Anfrage {i}",
                "subject_key": f"anfrage {i}", "status": "open", "created_at": now - timedelta(minutes=i),
                "last_message_at": now - timedelta(minutes=i), "message_count": 1,
                "read_at": None if i % 3 else now} for i in batch])
            ids = dict(conn.execute(select(CONVERSATION.c.subject, CONVERSATION.c.id)
                                    .where(CONVERSATION.c.studio_id == studio_id)).all())
            conn.execute(insert(MESSAGE), [{
                "studio_id": studio_id, "conversation_id": ids[f"Anfrage {i}"], "direction": "inbound",
                "state": "visible", "from_email": f"guest{i}@example.org", "from_name": f"Gast {i}",
                "subject": f"Anfrage {i}", "text": "Hallo, ich hätte gern einen Termin für ein kleines Motiv. " * 4,
                "full_text": "", "message_id": f"bench-{i}@example.org", "received_at": now - timedelta(minutes=i)}
                for i in batch])
        [owner] = recipients(conn, "owner@inkwell.example")
        if conn.dialect.name == "postgresql":
            # Planner statistics, as autovacuum keeps them on a live database: right after a bulk
            # load there are none, and PostgreSQL chose sequential scans (30 ms a page).
            conn.exec_driver_sql("ANALYZE guest, conversation, message")
        link = create_link(conn, b"bench-secret-key-0123456789", owner, now)
        _, token = consume_link(conn, link.token, now)
    return token


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    with throwaway_database(args.database) as (url, data_dir):
        settings = Settings(data_dir=Path(data_dir), database_url=url, mail_domain="mail.test",
                            secret_key="bench-secret-key-0123456789")
        migrate(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        started = time.perf_counter()
        token = seed(engine, args.conversations)
        print(f"seeded {args.conversations} conversations in {time.perf_counter() - started:.1f} s")
        app = create_app(engine, settings, [*web_routes()])
        app.register(noop)
        timings: dict[str, list[float]] = {"inbox": [], "baseline": [], "conversation": []}
        deadline = time.monotonic() + DEADLINE
        with TestClient(app) as client:
            client.cookies.set("gw_session", token)
            newest = "/app/c/" + client.get("/app/").text.split('href="/app/c/', 1)[1].split('"', 1)[0]
            pages = (("inbox", "/app/"), ("baseline", "/bench/noop"), ("conversation", newest))
            for _ in range(20):  # warm: templates compiled, catalogs loaded, pools filled
                assert all(client.get(path).status_code == 200 for _, path in pages)
            for _ in range(args.requests):
                for name, path in pages:
                    t0 = time.perf_counter()
                    response = client.get(path)
                    timings[name].append(time.perf_counter() - t0)
                    assert response.status_code == 200
                if time.monotonic() > deadline:
                    break
        engine.dispose()
    inbox, base, conversation = timings["inbox"], timings["baseline"], timings["conversation"]
    ratio = percentile(inbox, 0.99) / percentile(base, 0.99)
    result = {"database": args.database, "conversations": args.conversations, "requests": len(inbox),
              "inbox_p50_ms": round(percentile(inbox, 0.5) * 1000, 2),
              "inbox_p99_ms": round(percentile(inbox, 0.99) * 1000, 2),
              "baseline_p50_ms": round(percentile(base, 0.5) * 1000, 2),
              "baseline_p99_ms": round(percentile(base, 0.99) * 1000, 2),
              "p99_ratio": round(ratio, 1), "target_ratio": TARGET, "met": ratio < TARGET,
              "conversation_p50_ms": round(percentile(conversation, 0.5) * 1000, 2),
              "conversation_p99_ms": round(percentile(conversation, 0.99) * 1000, 2),
              "conversation_p99_ratio": round(percentile(conversation, 0.99) / percentile(base, 0.99), 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
