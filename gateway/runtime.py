"""Running the roles: SMTP, web and worker, together (`gateway serve`) or one per process.

All roles of one process share one event loop, one engine and one acceptor; the processor
(parse → thread → persist) runs in its own thread so parsing never stalls the SMTP and HTTP
servers' loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import faulthandler
import gc
import logging
import os
import shutil
import signal
import socket
import threading
from functools import partial
from typing import Callable, Coroutine, Iterable

import uvicorn
from litestar import Litestar
from sqlalchemy import Engine
from prometheus_client.multiprocess import mark_process_dead
from sqlalchemy.engine import make_url

from gateway.api.app import create_app
from gateway.web.inquiry_form import form_routes
from gateway.web.pages import web_routes
from gateway.api.metrics import MetricsListener, fresh_children_dir
from gateway.backup.schedule import BackupScheduler
from gateway.store.batching import WriteBatcher
from gateway.billing.lockdowns import reconcile
from gateway.billing.stripe_api import StripeApi
from gateway.store.db import get_engine, migrate
from gateway.lifecycle.helpdesk import ensure_helpdesk
from gateway.inbound.acceptor import Acceptor
from gateway.outbound.outbox import Feed, Outbox
from gateway.outbound.webhooks import WebhookSender
from gateway.lifecycle.webhook_notice import owner_notice
from gateway.inbound.processor import ProcessorThread, claimer, release_claims_of
from gateway.lifecycle.purge import purge
from gateway.events import Reaction
from gateway.eventlog import record_threaded
from gateway.lifecycle.account_deletion import CONFIRMATION, render_confirmations
from gateway.lifecycle.helpdesk_mail import helpdesk_commands
from gateway.lifecycle.login_mail import LOGIN_MAIL, render_links
from gateway.outbound.compose import LateBodies
from gateway.outbound.acknowledgements import acknowledge
from gateway.outbound.notify_answers import answer_by_mail
from gateway.outbound.notifications import (DIGEST_MAIL, NOTIFICATION_MAIL, notify, queue_told, render_digests,
                                            render_notifications, send_digests)
from gateway.logs import configure_logging
from gateway.settings import Settings
from gateway.worker_process import DUMP_THREADS, WorkerGroup, listen, say_ready
from gateway.inbound.smtp import start_smtp_server

log = logging.getLogger(__name__)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus-client's multiprocess mode keeps its files
ROLES = ("smtp", "web", "worker")
LOCKDOWN_RECONCILE_INTERVAL = 600.0  # seconds between the worker's lockdown reconciliations
# What happens when a guest's message has been threaded (gateway/events.py), in this order: the
# studio's event log first, so the guest's message.created comes before its acknowledgement's.
REACTIONS: tuple[Reaction, ...] = (record_threaded, acknowledge, helpdesk_commands, notify, answer_by_mail)
# Automatic mail whose body is rendered only when it is sent (gateway/outbound/compose.LateBodies).
LATE_BODIES: dict[str, LateBodies] = {CONFIRMATION: render_confirmations, LOGIN_MAIL: render_links,
                                      NOTIFICATION_MAIL: render_notifications, DIGEST_MAIL: render_digests}
# What the outbox queues for itself before each round (gateway/outbound/outbox.Feed): the mails
# of the notifications the processor noted while it threaded.
OUTBOX_FEEDS: tuple[Feed, ...] = (queue_told,)
DIGEST_INTERVAL = 3600.0  # seconds between the hourly notification digests


class PeriodicRound:
    """The worker's periodic rounds (purge, lockdown reconciliation): one at start, then one every
    interval until stop(), each in a thread so the event loop never waits on the database or Stripe.

    A failed round is logged and the next one tries again: every round's work is written to be
    repeatable (the purge logs before it erases, lockdowns record intent before asking Stripe).
    """

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval      # seconds between the end of one round and the next
        self.work = work
        self._stop = asyncio.Event()
        self._rounds = 0
        self._done = threading.Condition()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.work)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("%s round failed; retrying in %.0f s", self.name, self.interval)
            with self._done:
                self._rounds += 1
                self._done.notify_all()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        """Called on the loop's thread; a round in progress finishes first."""
        self._stop.set()

    def wait_rounds(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least `count` rounds have run (tests, from another thread)."""
        with self._done:
            return self._done.wait_for(lambda: self._rounds >= count, timeout=timeout)


class Gateway:
    def __init__(self, settings: Settings, roles: Iterable[str] = ROLES, engine: Engine | None = None,
                 worker: WorkerGroup | None = None, *, serve_metrics: bool = True,
                 metrics_children_dir: str | None = None) -> None:
        """`worker`: the worker role runs in those child processes (`gateway serve`); this one's
        acceptor and reply API wake it instead of a processor and outbox of their own.
        `serve_metrics`: open the /metrics listener when GATEWAY_METRICS_PORT is set (not in
        `serve`'s children: their parent's listener shows what they counted, read from
        `metrics_children_dir`)."""
        self.settings = settings
        self.metrics: MetricsListener | None = None
        self._serve_metrics = serve_metrics
        self._metrics_children_dir = metrics_children_dir
        self.roles = set(roles)
        self.worker = worker
        unknown = self.roles - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles: {sorted(unknown)}")
        self.engine = engine
        self.processor: ProcessorThread | None = None
        self.acceptor: Acceptor | None = None
        self.outbox: Outbox | None = None
        self.writes: WriteBatcher | None = None
        self.backups: BackupScheduler | None = None
        self._backup_task: asyncio.Task[None] | None = None
        self.purger: PeriodicRound | None = None
        self.digests: PeriodicRound | None = None
        self._digest_task: asyncio.Task[None] | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self.app: Litestar | None = None
        self._outbox_task: asyncio.Task[None] | None = None
        self.lockdowns: PeriodicRound | None = None
        self.webhooks: PeriodicRound | None = None
        self._webhooks_task: asyncio.Task[None] | None = None
        self._lockdowns_task: asyncio.Task[None] | None = None
        self._smtp: asyncio.AbstractServer | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_task: asyncio.Task[None] | None = None
        self.smtp_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None

    async def start(self, *, smtp_sock: socket.socket | None = None,
                    http_sock: socket.socket | None = None) -> None:
        url = self.settings.resolved_database_url
        await asyncio.to_thread(migrate, url)
        self.engine = self.engine or get_engine(url, self.settings.db_busy_timeout)
        self.settings.secret()  # create the key before any role needs it
        await asyncio.to_thread(ensure_helpdesk, self.engine, self.settings)
        if self._serve_metrics and self.settings.metrics_port is not None:
            self.metrics = MetricsListener(self.engine, self.settings.metrics_host, self.settings.metrics_port,
                                           self._metrics_children_dir)
            self.metrics.start()
        if "worker" in self.roles:
            # At the end of a burst the outbox looks at once (not after its poll interval) for
            # the notifications the burst noted (gateway/outbound/notifications.queue_told).
            loop = asyncio.get_running_loop()
            self.processor = ProcessorThread(self.engine, self.settings, REACTIONS,
                                             on_idle=lambda: loop.call_soon_threadsafe(self._wake_outbox))
            self.processor.start()
            self.outbox = Outbox(self.engine, self.settings, late_bodies=LATE_BODIES, feeds=OUTBOX_FEEDS)
            self._outbox_task = asyncio.create_task(self.outbox.run(), name="outbox")
            # Posts the studios' events to their webhook endpoints (gateway/outbound/webhooks.py).
            self.webhooks = PeriodicRound("webhook delivery", self.settings.webhook_interval, WebhookSender(
                self.engine, self.settings, on_disabled=owner_notice(self.settings)).run_round)
            self._webhooks_task = asyncio.create_task(self.webhooks.run(), name="webhooks")
            if self.settings.stripe_secret_key is not None:
                # Finishes lockdown pauses and resumes that a crash, a Stripe outage or a webhook
                # left half-done (gateway/billing/lockdowns.py records intent before asking Stripe).
                self.lockdowns = PeriodicRound("lockdown reconciliation", LOCKDOWN_RECONCILE_INTERVAL,
                                               partial(reconcile, self.engine, StripeApi(self.settings)))
                self._lockdowns_task = asyncio.create_task(self.lockdowns.run(), name="lockdowns")
            if self.settings.backup_interval_hours > 0:
                self.backups = BackupScheduler(self.engine, self.settings)
                self._backup_task = asyncio.create_task(self.backups.run(), name="backups")
            # The hourly digest of notifications (gateway/outbound/notifications.py).
            self.digests = PeriodicRound("notification digest", DIGEST_INTERVAL,
                                         partial(send_digests, self.engine, self.settings))
            self._digest_task = asyncio.create_task(self.digests.run(), name="digests")
            if self.settings.purge_interval_hours > 0:
                # Hourly by default: a round at start, then one every GATEWAY_PURGE_INTERVAL_HOURS.
                self.purger = PeriodicRound("purge", self.settings.purge_interval_hours * 3600,
                                            partial(purge, self.engine, self.settings))
                self._purge_task = asyncio.create_task(self.purger.run(), name="purge")
        wake_processor = self.processor.wake if self.processor else self.worker.wake_processor if self.worker else None
        if self.roles & {"smtp", "web"}:  # what takes mail in (SMTP, webhooks); a worker takes none
            self.acceptor = Acceptor(self.engine, self.settings, on_stored=wake_processor)
            await self.acceptor.start()
        if "smtp" in self.roles:
            if smtp_sock is None:
                smtp_sock = listening_socket(self.settings.smtp_host, self.settings.smtp_port, self.settings)
            self._smtp = await start_smtp_server(self.acceptor, self.engine, self.settings, sock=smtp_sock)
            self.smtp_address = self._smtp.sockets[0].getsockname()[:2]
        if "web" in self.roles:
            app = self.app = create_app(self.engine, self.settings, pages=[*form_routes(), *web_routes()])
            app.state.acceptor = self.acceptor
            app.state.reactions = REACTIONS   # a form submission is announced as guest mail is
            self.writes = WriteBatcher(self.engine)
            await self.writes.start()
            app.state.writes = self.writes
            if self.outbox is not None:
                app.state.wake_outbox = self.outbox.wake
            elif self.worker is not None:
                app.state.wake_outbox = self.worker.wake_outbox
            if http_sock is None:
                http_sock = listening_socket(self.settings.http_host, self.settings.http_port, self.settings)
            # log_config=None: uvicorn's lines go through our handler (JSON, masking), not its own.
            # Proxy headers only from GATEWAY_FORWARDED_ALLOW_IPS: uvicorn would otherwise read its
            # own FORWARDED_ALLOW_IPS from the environment, a setting nobody documented.
            trusted = self.settings.forwarded_allow_ips.strip()
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", log_config=None,
                                    http="httptools", loop="none", timeout_graceful_shutdown=5,
                                    proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None)
            self._uvicorn = uvicorn.Server(config)
            self._uvicorn_task = asyncio.create_task(self._uvicorn.serve(sockets=[http_sock]))
            while not self._uvicorn.started:
                if self._uvicorn_task.done():
                    self._uvicorn_task.result()
                await asyncio.sleep(0.01)  # uvicorn offers no start event; bounded by the check above
            self.http_address = http_sock.getsockname()[:2]
            log.info("HTTP listening on %s", self.http_address)

    def _wake_outbox(self) -> None:
        """On the loop's thread (the processor's on_idle calls it there)."""
        if self.outbox is not None:
            self.outbox.wake()

    async def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            await self._smtp.wait_closed()
        if self._uvicorn is not None and self._uvicorn_task is not None:
            hub = self.app.state.get("event_hub") if self.app is not None else None
            if hub is not None:
                hub.close()  # end the event streams now: uvicorn would wait out its grace for them
            self._uvicorn.should_exit = True
            await self._uvicorn_task
        if self.writes is not None:
            await self.writes.stop()
        if self.acceptor is not None:
            await self.acceptor.stop()
        if self.outbox is not None and self._outbox_task is not None:
            self.outbox.stop()
            await self._outbox_task
        if self.webhooks is not None and self._webhooks_task is not None:
            self.webhooks.stop()
            await self._webhooks_task
        if self.lockdowns is not None and self._lockdowns_task is not None:
            self.lockdowns.stop()
            await self._lockdowns_task
        if self.backups is not None and self._backup_task is not None:
            self.backups.stop()
            await self._backup_task  # a backup in progress is finished, not torn
        if self.digests is not None and self._digest_task is not None:
            self.digests.stop()
            await self._digest_task
        if self.purger is not None and self._purge_task is not None:
            self.purger.stop()
            await self._purge_task
        if self.processor is not None:
            await asyncio.to_thread(self.processor.stop)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


REUSE_PORT_HINT = ("{host}:{port} is in use; to run several `gateway smtp` or `gateway web` processes on one "
                   "port, set GATEWAY_REUSE_PORT=true for all of them")


def listening_socket(host: str, port: int, settings: Settings) -> socket.socket:
    """The SMTP or HTTP listener. With GATEWAY_REUSE_PORT, SO_REUSEPORT: each process of a role
    binds the same port and the kernel hashes new connections over them (Linux 3.9+), so the
    Procfile's roles can each run several times without a balancer in front."""
    try:
        return socket.create_server((host, port), reuse_port=settings.reuse_port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, REUSE_PORT_HINT.format(host=host, port=port)) from exc
        raise


def settle_heap() -> None:
    """Move everything the start-up built (modules, app, engine, templates: ~175,000 objects)
    out of the garbage collector's reach, once the process is serving.

    A full collection walked all of it: about 50 ms here, during which no SMTP reply or API
    answer went out, often enough to decide p99 latencies. Objects made at start-up live as
    long as the process; what requests allocate is still collected as usual."""
    gc.collect()
    gc.freeze()


class Served:
    """What a `gateway` role command runs: the Gateway, and for `serve` its worker child process.

    `gateway serve` (all roles) puts the worker role in child processes when the machine has the
    cores (GATEWAY_SERVE_WORKER_PROCESSES); benchmarks start it through here to measure the same.
    """

    def __init__(self, settings: Settings, roles: Iterable[str]) -> None:
        roles = set(roles)
        count = settings.resolved_serve_worker_processes if roles == set(ROLES) else 0
        self.worker = WorkerGroup(worker_child, settings, count, on_death=self._release_claims) if count else None
        # The children count into files of their own (prometheus-client's multiprocess mode) in a
        # directory made fresh for this run, so nothing of an earlier run is ever added in.
        self.metrics_dir = (fresh_children_dir()
                            if self.worker is not None and settings.metrics_port is not None else None)
        self.gateway = Gateway(settings, roles - {"worker"} if self.worker else roles, worker=self.worker,
                               metrics_children_dir=self.metrics_dir)
        self._watching: asyncio.Task[None] | None = None

    async def start(self, *, smtp_sock: socket.socket | None = None,
                    http_sock: socket.socket | None = None) -> None:
        await self.gateway.start(smtp_sock=smtp_sock, http_sock=http_sock)
        if self.worker is not None:
            if self.metrics_dir is not None:
                # Read by prometheus-client when a spawned child imports it; this process imported
                # it long ago and keeps counting in memory (its values are chosen at import).
                os.environ[MULTIPROC_DIR] = self.metrics_dir
            self.worker.start()  # after start(): the schema is migrated and the helpdesk exists
            # Ready means all of it: a child spends a second or two of CPU importing the
            # parsers, which would otherwise be taken from the first mail's senders.
            await self.worker.wait_ready()
            self._watching = asyncio.create_task(self.worker.watch(), name="worker process")

    async def _release_claims(self, pid: int) -> None:
        """A worker child died without finishing: the mail it had claimed goes back to the queue now."""
        if self.metrics_dir is not None:
            mark_process_dead(pid, self.metrics_dir)  # its live gauges go; its counts stay in the sums
        engine = self.gateway.engine
        if engine is None:
            return
        freed = await asyncio.to_thread(release_claims_of, engine, claimer(pid))
        if freed:
            log.warning("worker process %s died holding %d message(s); they are back in the queue", pid, freed)
            if self.worker is not None:
                self.worker.wake_processor()

    async def stop(self) -> None:
        await self.gateway.stop()
        if self.worker is not None:
            await self.worker.stop()
        if self._watching is not None:
            self._watching.cancel()     # it may be pausing before a restart: nothing is left to restart
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        if self.metrics_dir is not None:
            if os.environ.get(MULTIPROC_DIR) == self.metrics_dir:
                del os.environ[MULTIPROC_DIR]
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


async def run_until_signalled(settings: Settings, roles: Iterable[str]) -> None:
    served = Served(settings, roles)
    await served.start()
    gateway, worker = served.gateway, served.worker
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parts = []
    if gateway.metrics is not None and gateway.metrics.address is not None:
        parts.append(f"metrics on http://{gateway.metrics.address[0]}:{gateway.metrics.address[1]}/metrics")
    if gateway.smtp_address:
        parts.append(f"SMTP on {gateway.smtp_address[0]}:{gateway.smtp_address[1]}")
    if gateway.http_address:
        parts.append(f"HTTP on http://{gateway.http_address[0]}:{gateway.http_address[1]}")
    if gateway.processor or worker:
        pids = worker.pids if worker else []
        where = f" in process{'es' if len(pids) > 1 else ''} {', '.join(map(str, pids))}" if pids else ""
        parts.append(f"worker running{where} (inbound processing and outbox"
                     + (f", a backup every {settings.backup_interval_hours:g} h)"
                        if settings.backup_interval_hours > 0 else ")"))
    log.info("gateway ready: %s (database %s)", ", ".join(parts), database_shown(settings.resolved_database_url))
    await stop.wait()
    log.info("shutting down")
    await served.stop()


def worker_child(settings: Settings, channel: socket.socket) -> None:
    """`gateway serve`'s worker process (gateway/worker_process.py): the worker role until the
    parent closes the channel or sends SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent stops us in order
    faulthandler.register(DUMP_THREADS, all_threads=True)  # the parent's question when we don't stop
    configure_logging(settings)
    _run_loop(_worker_until_told(settings, channel))


async def _worker_until_told(settings: Settings, channel: socket.socket) -> None:
    gateway = Gateway(settings, ("worker",), serve_metrics=False)
    await gateway.start()
    settle_heap()
    stop = asyncio.Event()
    assert gateway.processor is not None and gateway.outbox is not None
    await asyncio.to_thread(gateway.processor.wait_started)
    listen(channel, processor=gateway.processor.wake, outbox=gateway.outbox.wake, closed=stop.set)
    say_ready(channel)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await gateway.stop()
    channel.close()


def database_shown(url: str) -> str:
    """The database URL as the logs may show it: SQLAlchemy's rendering without the password."""
    return make_url(url).render_as_string(hide_password=True)


def run(settings: Settings, roles: Iterable[str]) -> None:
    _run_loop(run_until_signalled(settings, roles))


def _run_loop(main: Coroutine[None, None, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(main)
        return
    # uvloop halves HTTP latency, and with the fast SMTP edge the loop's own work is a large part
    # of what is left: the do-nothing edge took 1.15x (20x1) and 1.66x (20x150) the mail/s on uvloop
    # against the stock loop (3 A/B rounds; stock aiosmtpd gains nothing). It comes with
    # uvicorn[standard]; without it the stock loop runs everything unchanged.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
