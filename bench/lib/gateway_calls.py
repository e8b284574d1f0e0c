"""Everything the benchmarks take from the gateway's own modules (`gateway.*`), in one place.

Issue 12 moved these modules into gateway's stage packages: after a
move, only the imports in this file change. Each import stays inside its function, so a
process loads only what it uses: the load clients and the do-nothing servers no gateway code
at all, as before.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.lib.mails import MAIL_DOMAIN, RCPT, SEED_SENDER, STUDIO_SLUG, seed_inquiry

SECRET = "bench-secret-key-0123456789abcdef"
MAILGUN_SIGNING_KEY = "key-bench-signing-0123456789abcdef"
# The acceptor's logger: at INFO it says, when it stops, how many group commits stored the run.
ACCEPTOR_LOGGER = "gateway.inbound.acceptor"


def normalise_url(url: str) -> str:
    from gateway.store.db import normalise_url

    return normalise_url(url)


def settings(data_dir: str | Path, database_url: str, **extra: Any) -> Any:
    """The gateway's Settings for a benchmark run: loopback ports chosen by the OS, no flood limit
    in the way of thousands of new guests, everything else as deployed unless `extra` says."""
    from gateway.settings import Settings

    values: dict[str, Any] = dict(data_dir=Path(data_dir), database_url=database_url, mail_domain=MAIL_DOMAIN,
                                  secret_key=SECRET, smtp_port=0, http_port=0, log_level="WARNING",
                                  flood_max_new_per_hour=10**9, reply_max_per_conversation_per_hour=10**9)
    return Settings(**(values | extra))


def form_issued(studio_id: int) -> str:
    """The hidden `_issued` field the inquiry page serves (gateway/forms/issue.py), for the bench's secret."""
    from gateway.forms.issue import issue

    return issue(SECRET.encode(), studio_id)


def smtp_limits() -> tuple[int, float]:
    """(message size limit, idle timeout) of the gateway's SMTP server as deployed."""
    from gateway.settings import Settings

    defaults = Settings(secret_key=SECRET, mail_domain=MAIL_DOMAIN)
    return defaults.smtp_max_message_size, defaults.smtp_idle_timeout


def migrated_engine(settings: Any) -> Any:
    from gateway.store.db import get_engine, migrate

    migrate(settings.resolved_database_url)
    return get_engine(settings.resolved_database_url)


def dispose_engines() -> None:
    from gateway.store.db import dispose_engines

    dispose_engines()


def add_studio(engine: Any) -> str:
    """The benchmarks' studio (`inkwell`); returns its owner's API token."""
    from gateway.store.db import write_tx
    from gateway.access.studios import add_studio

    with write_tx(engine) as conn:
        _, token = add_studio(conn, STUDIO_SLUG, "Inkwell Tattoo", "owner@inkwell.example")
    return token


def store(engine: Any, settings: Any, mails: list[tuple[str, bytes]], batch: int = 100) -> None:
    """Store (envelope sender, raw message) pairs to the studio as the acceptor does, `batch` a transaction."""
    from gateway.store.db import write_tx
    from gateway.inbound.intake import Envelope, store_batch

    for start in range(0, len(mails), batch):
        with write_tx(engine) as conn:
            store_batch(conn, [(raw, Envelope(sender, [RCPT])) for sender, raw in mails[start:start + batch]],
                        settings, settings.secret())


def drain(engine: Any, settings: Any) -> list[Any]:
    """Process everything pending, in this thread; one `Processed` per message."""
    from gateway.inbound.processor import drain
    from gateway.runtime import REACTIONS

    return drain(engine, settings, REACTIONS)


def seed_conversation(settings: Any, count: int = 1) -> tuple[Any, list[int], str]:
    """The studio and `count` guests' inquiries, each threaded into a conversation of its own:
    (engine, their ids, owner token)."""
    from bench.lib.mails import seed_sender

    engine = migrated_engine(settings)
    token = add_studio(engine)
    store(engine, settings, [(seed_sender(i), seed_inquiry(i)) for i in range(count)])
    drain(engine, settings)
    with engine.connect() as conn:
        ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM conversation ORDER BY id")]
    return engine, ids, token


async def start_gateway(settings: Any, roles: tuple[str, ...], smtp_sock: Any, http_sock: Any) -> Any:
    """The real gateway with `roles`, started as `gateway serve` (all roles: with its worker child
    process when the machine has the cores) or a role command starts it, its heap settled.
    Answers the `Served`; its `.gateway` is this process's Gateway, `.worker` the children, if any."""
    from gateway.runtime import Served, settle_heap

    served = Served(settings, roles)
    await served.start(smtp_sock=smtp_sock, http_sock=http_sock)
    settle_heap()  # as run_until_signalled does
    return served


def processed_count(engine: Any) -> int:
    """Stored mail the processor is done with (threaded, quarantined or set aside), from the
    database: the count to wait on when the processor runs in another process."""
    from sqlalchemy import func, select

    from gateway.store.tables import INBOUND

    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(INBOUND)
                            .where(INBOUND.c.status.not_in(("pending", "processing")))).scalar_one()


def timed_functions() -> list[tuple[Any, str, str, int | None]]:
    """(owner, attribute, label, index of the batch argument) of each function smtp_ingest's
    --profile times. Wrap a function where its caller looks it up (module global or class)."""
    from gateway.inbound import acceptor, intake, processor, smtp

    return [
        (acceptor.Acceptor, "_write", "acceptor: _write (whole tx incl. commit)", 1),
        (acceptor, "store_batch", "acceptor:   store_batch (inserts)", None),
        (intake, "peek", "acceptor:     headers.peek", None),
        (intake, "_flooded", "acceptor:     _flooded (flood check, once per batch)", None),
        (intake.blob_store, "put_many", "acceptor:     blob_store.put_many", None),
        (smtp.StudioDirectory, "_lookup", "smtp: RCPT studio lookup (cache miss)", None),
        (processor, "claim", "processor: claim", None),
        (processor, "_persist", "processor:   _persist (thread + write, one chunk)", None),
        (processor, "thread_message", "processor:   thread_message", None),
        (processor, "should_defer", "processor: should_defer (arrival check)", None),
        (processor, "process_pending", "processor: process_pending (whole pass)", None),
    ]


def flanker_mime() -> Any:
    """flanker.mime as the gateway imports it (quietly): the processor benchmark's baseline."""
    from gateway.inbound.mime.tree import _flanker_mime

    return _flanker_mime


# --- outbound ---------------------------------------------------------------------------------

def create_replies(engine: Any, settings: Any, conversation_id: int, text: str, count: int) -> Any:
    """`count` studio replies queued in the conversation, as the reply API queues them; the last."""
    from gateway.store.db import write_tx
    from gateway.outbound.replies import create_reply

    reply = None
    with write_tx(engine) as conn:
        studio_id = conn.exec_driver_sql("SELECT id FROM studio").scalar_one()
        for _ in range(count):
            reply = create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=text,
                                 settings=settings)
    return reply


def composed_reply(engine: Any, settings: Any, conversation_id: int, text: str) -> bytes:
    """One reply composed as the outbox sends it (no DKIM)."""
    from gateway.store.db import write_tx
    from gateway.outbound.compose import compose
    from gateway.outbound.render import Renderer

    reply = create_replies(engine, settings, conversation_id, text, 1)
    assert reply is not None
    with write_tx(engine) as conn:
        return compose(conn, reply.message_row_id, settings, settings.secret(), Renderer(), None).data


def outbox(engine: Any, settings: Any) -> Any:
    from gateway.outbound.outbox import Outbox
    from gateway.runtime import LATE_BODIES, OUTBOX_FEEDS

    return Outbox(engine, settings, late_bodies=LATE_BODIES, feeds=OUTBOX_FEEDS)


def dkim_private_key(kind: str) -> bytes:
    """A new DKIM key, "rsa" (2048 bits) or "ed25519", as PEM."""
    from gateway.outbound.signing import generate_keypair

    return generate_keypair(kind).private_pem


def dkim_signer(kind: str) -> Any:
    from gateway.outbound.signing import DkimSigner

    return DkimSigner(domain=MAIL_DOMAIN, selector="bench", private_pem=dkim_private_key(kind))
