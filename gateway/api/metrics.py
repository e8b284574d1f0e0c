"""`/metrics` in Prometheus' text format, on a listener of its own (GATEWAY_METRICS_HOST/PORT).

What a scrape shows:
- the counters of gateway/metrics.py and Litestar's per-route HTTP timings
  (litestar.plugins.prometheus, added to the app only while metrics are on), from this
  process's default registry;
- for `gateway serve`, what its worker children counted, read from their files in the
  multiprocess directory and added series by series (prometheus-client's multiprocess mode);
- the queues, read from the database at scrape time, so they are right whichever process
  (or host) did the work: inbound mail waiting to be processed, outbound jobs waiting to be
  sent, each with the age of its oldest item, and the quarantine's size.

Its own listener rather than a route of the API: the API faces the internet (webhooks), and
the counters tell a stranger how much mail a studio gets and when the relay fails. Bound to
127.0.0.1 by default, like the API; the scraper is expected on the host or a private network.
The server is prometheus-client's own (a WSGI server in a daemon thread): a scrape never waits
on the event loop that answers SMTP, and the loop never waits on a scrape's queries.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from litestar.middleware.base import DefineMiddleware
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from gateway.store.db import read_tx
from gateway.outbound.readiness import outbox_backlog, quarantined_count
from gateway.store.tables import INBOUND

log = logging.getLogger(__name__)

# Sample kinds whose values add up across processes; `_created` (a timestamp) does not.
_ADDITIVE = ("counter", "histogram", "summary")
_WAITING_INBOUND = ("pending", "processing")
CHILDREN_DIR_PREFIX = "gateway-metrics-"  # + the parent's pid + "-" + random: one per `serve` run


def http_timing() -> DefineMiddleware:
    """Litestar's Prometheus middleware: request counts and a latency histogram per route
    template (`/api/v1/conversations/{conversation_id}`, not every id: bounded series)."""
    return PrometheusConfig(app_name="gateway", prefix="gateway_http", group_path=True).middleware


class ProcessesCollector(Collector):
    """This process's registry and, when given, its worker children's multiprocess files,
    summed per series so a scrape shows one total per counter, whichever process counted."""

    def __init__(self, children_dir: str | None) -> None:
        self.children_dir = children_dir

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        sources: list[Iterable[Metric]] = [REGISTRY.collect()]
        if self.children_dir is not None:
            sources.append(MultiProcessCollector(None, path=self.children_dir).collect())  # type: ignore[arg-type]
        for source in sources:
            for metric in source:
                merged = families.get(metric.name)
                if merged is None:
                    merged = families[metric.name] = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                _add(merged, metric)
        return families.values()


def _add(merged: Metric, metric: Metric) -> None:
    at = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(merged.samples)}
    for sample in metric.samples:
        index = at.get((sample.name, tuple(sorted(sample.labels.items()))))
        if index is None:
            merged.samples.append(sample)
        elif metric.type in _ADDITIVE and not sample.name.endswith("_created"):
            merged.samples[index] = sample._replace(value=merged.samples[index].value + sample.value)


class QueuesCollector(Collector):
    """Depth and oldest age of the queues, from the database at scrape time. The same figures
    from every process of one database: aggregate them with max(), not sum()."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gateway_database_up", "Whether the scrape's queue queries succeeded")
        try:
            with read_tx(self.engine) as conn:
                inbound = conn.execute(select(func.count(), func.min(INBOUND.c.received_at))
                                       .where(INBOUND.c.status.in_(_WAITING_INBOUND))).one()
                backlog = outbox_backlog(conn)
                quarantined = quarantined_count(conn)
        except Exception as exc:  # noqa: BLE001 - a scrape shows the database down, not a 500
            log.warning("metrics: queue queries failed: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = datetime.now(timezone.utc)
        depth = GaugeMetricFamily("gateway_queue_depth", "Items waiting, by queue "
                                  "(inbound: stored, not yet processed; outbox: replies and notices not yet sent)",
                                  labels=["queue"])
        age = GaugeMetricFamily("gateway_queue_oldest_age_seconds", "Age of the oldest waiting item, by queue "
                                "(0 when empty)", labels=["queue"])
        for name, (count, oldest) in (("inbound", tuple(inbound)), ("outbox", (backlog.waiting, backlog.oldest))):
            depth.add_metric([name], count)
            age.add_metric([name], _age(now, oldest))
        yield depth
        yield age
        parked = GaugeMetricFamily("gateway_inbound_quarantined", "Messages set aside in the quarantine")
        parked.add_metric([], quarantined)
        yield parked


def _age(now: datetime, oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite keeps no zone; every timestamp we write is UTC
        oldest = oldest.replace(tzinfo=timezone.utc)
    return max(0.0, (now - oldest).total_seconds())


class MetricsListener:
    """The /metrics server of one process: start() binds, stop() closes."""

    def __init__(self, engine: Engine, host: str, port: int, children_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProcessesCollector(children_dir))
        self.registry.register(QueuesCollector(engine))
        self.host, self.port = host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, self.host, registry=self.registry)
        self.address = self._server.server_address[:2]  # type: ignore[assignment]
        log.info("metrics on http://%s:%s/metrics", *self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def fresh_children_dir() -> str:
    """A new, empty directory for `serve`'s worker children to count in (PROMETHEUS_MULTIPROC_DIR).

    Made fresh for every run, so no count of an earlier run is ever added in; the directories of
    runs that ended without removing theirs (`kill -9`) are removed here, at the next start: one
    whose parent no longer runs is read by nobody again. Only our own can be removed (the
    temporary directory's sticky bit), and rmtree never follows a symlink planted there.
    """
    base = Path(tempfile.gettempdir())
    for old in base.glob(CHILDREN_DIR_PREFIX + "*-*"):
        pid = old.name[len(CHILDREN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{CHILDREN_DIR_PREFIX}{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
