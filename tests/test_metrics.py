"""/metrics: a scripted mix of mail, a bad webhook, replies and relay failures, then the
counters as Prometheus reads them (prometheus_client.parser), in one process and under
`gateway serve` with worker children (their counts reach the parent's listener)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tests.providers as p
from gateway.api.metrics import CHILDREN_DIR_PREFIX, fresh_children_dir
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail
from tests.relay_sink import RelaySink
from tests.test_outbound import reply, send_due
from tests.test_serve import Serve

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Series:
    """Every sample of a scrape, by name and labels."""
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Series, before: Series, name: str, **labels: str) -> float:
    """Counters are per process and the tests share one: what this test added."""
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as relay:
        yield relay


def metrics_url(running: RunningGateway) -> str:
    assert running.gateway.metrics is not None and running.gateway.metrics.address is not None
    host, port = running.gateway.metrics.address
    return f"http://{host}:{port}/metrics"


def test_a_scripted_mix_shows_in_the_counters_and_queues(tmp_path: Path, database_url: str, sink: RelaySink) -> None:
    settings = make_settings(tmp_path, database_url, smtp_relay_url=sink.url, mailgun_signing_key=p.MAILGUN_KEY,
                             smtp_max_message_size=20_000, metrics_port=0, stripe_webhook_secrets="whsec_metrics_test")
    running = start_gateway(settings)
    try:
        url = metrics_url(running)
        before = scrape(url)
        studio = running.add_studio("inkwell", name="Inkwell Tattoo")
        # Mail over SMTP: two accepted, one too large (552 from the DATA phase), one unknown studio.
        first = "<first@example.org>"
        assert running.send(make_mail(message_id=first), studio.address).code == 250
        assert running.send(make_mail(subject="Zweite Anfrage", from_="kai@example.net"), studio.address,
                            mail_from="kai@example.net").code == 250
        assert running.send(make_mail(body="x" * 30_000), studio.address).code == 552
        assert running.send(make_mail(), "nobody@mail.test").code == 550
        # A stranger answering the first conversation: filed, but held for the studio.
        assert running.send(make_mail(in_reply_to=first, from_="stranger@example.com"), studio.address,
                            mail_from="stranger@example.com").code == 250
        # A webhook post with a signature from some other account.
        bad = p.mailgun_post(p.mailgun_mime_form(make_mail(), studio.address), key="key-some-other-account-000")
        assert running.api(None).post(bad.path, content=bad.body, headers=bad.headers).status_code == 401
        forged = running.api(None).post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
        assert forged.status_code == 400

        waiting = scrape(url)
        assert value(waiting, "gateway_queue_depth", queue="inbound") == 3
        assert value(waiting, "gateway_queue_oldest_age_seconds", queue="inbound") >= 0
        running.process()

        api = running.api(studio.token)
        conversations = api.get("/api/v1/conversations").json()["items"]
        assert len(conversations) == 2
        # Two replies: the relay answers the first 451 (retried later), the second 550 (failed).
        sink.answer = "451 4.3.0 Try again later"
        reply(running, studio.token, conversations[0]["id"])
        queued = scrape(url)
        assert value(queued, "gateway_queue_depth", queue="outbox") == 1
        send_due(running)
        sink.answer = "550 5.7.1 Relaying denied"
        reply(running, studio.token, conversations[1]["id"])
        send_due(running)
        sink.answer = "250"
        send_due(running, later=timedelta(hours=1))  # the 451 one is due again, and goes
        assert len(sink.received) == 1

        after = scrape(url)
        assert delta(after, before, "gateway_mail_total", source="smtp", code="250") == 3
        assert delta(after, before, "gateway_mail_total", source="smtp", code="552") == 1
        assert delta(after, before, "gateway_smtp_recipients_refused_total", code="550") == 1
        assert delta(after, before, "gateway_webhook_posts_total", provider="mailgun", code="401") == 1
        assert delta(after, before, "gateway_mail_total", source="mailgun", code="401") == 1
        assert delta(after, before, "gateway_webhook_posts_total", provider="stripe", code="400") == 1
        assert delta(after, before, "gateway_mail_total", source="stripe", code="400") == 0  # billing, not mail
        assert delta(after, before, "gateway_inbound_processed_total", result="done") == 3
        assert delta(after, before, "gateway_inbound_held_total", kind="mail") == 1
        assert delta(after, before, "gateway_outbox_attempts_total", kind="retried") == 1
        assert delta(after, before, "gateway_outbox_attempts_total", kind="failed") == 1
        assert delta(after, before, "gateway_outbox_attempts_total", kind="sent") == 1
        assert value(after, "gateway_queue_depth", queue="inbound") == 0
        assert value(after, "gateway_queue_depth", queue="outbox") == 0
        assert value(after, "gateway_queue_oldest_age_seconds", queue="outbox") == 0
        assert value(after, "gateway_inbound_quarantined") == 0
        assert value(after, "gateway_database_up") == 1
        # Litestar's latency histogram, per route template rather than per conversation id.
        route = "/api/v1/conversations/{conversation_id}/replies"
        timed = [(labels, v - before.get((name, labels), 0.0)) for (name, labels), v in after.items()
                 if name == "gateway_http_request_duration_seconds_count" and ("path", route) in labels]
        assert sum(v for _, v in timed) == 2, timed
        assert not any(("path", f"/api/v1/conversations/{c['id']}/replies") in labels
                       for (_, labels) in after for c in conversations)
    finally:
        running.stop()


def test_metrics_are_off_by_default_and_never_on_the_public_listener(tmp_path: Path, database_url: str) -> None:
    running = start_gateway(make_settings(tmp_path, database_url))
    try:
        assert running.gateway.metrics is None
        assert running.api(None).get("/metrics").status_code == 404
    finally:
        running.stop()
    running = start_gateway(make_settings(tmp_path, database_url, metrics_port=0))
    try:
        assert running.api(None).get("/metrics").status_code == 404  # on its own port only
        assert value(scrape(metrics_url(running)), "gateway_database_up") == 1
    finally:
        running.stop()


def test_serve_shows_what_its_worker_children_counted(tmp_path: Path) -> None:
    serve = Serve(tmp_path, GATEWAY_METRICS_PORT="0", GATEWAY_SERVE_WORKER_PROCESSES="2")
    try:
        url = _metrics_in(serve.ready)
        subjects = {f"Anfrage {i}" for i in range(4)}
        for subject in sorted(subjects):
            serve.send(subject)
        assert serve.wait_listed(subjects)
        series = _scrape_until(url, lambda s: value(s, "gateway_inbound_processed_total", result="done") >= 4)
        # Processed in the children, accepted in the parent: one scrape shows both, summed.
        assert value(series, "gateway_inbound_processed_total", result="done") == 4
        assert value(series, "gateway_mail_total", source="smtp", code="250") == 4
        assert value(series, "gateway_queue_depth", queue="inbound") == 0
        with httpx.Client(base_url=serve.base_url, headers={"Authorization": f"Bearer {serve.token}"}) as api:
            conversation = api.get("/api/v1/conversations").json()["items"][0]
            answer = api.post(f"/api/v1/conversations/{conversation['id']}/replies", json={"text": "Gern."})
            assert answer.status_code == 202, answer.text
        # No relay configured: the child's outbox writes the reply to the Maildir, a send.
        series = _scrape_until(url, lambda s: value(s, "gateway_outbox_attempts_total", kind="sent") >= 1)
        assert value(series, "gateway_outbox_attempts_total", kind="sent") == 1
        # A child killed outright: what it counted stays in the sums (counters never go back), and
        # the child started in its place counts on in files of its own.
        children = re.search(r"worker running in processes (\d+), (\d+)", serve.ready)
        assert children, serve.ready
        for pid in map(int, children.groups()):
            os.kill(pid, signal.SIGKILL)
        later = {f"Nachfrage {i}" for i in range(2)}
        for subject in sorted(later):
            serve.send(subject)
        assert serve.wait_listed(subjects | later, timeout=120)
        series = _scrape_until(url, lambda s: value(s, "gateway_inbound_processed_total", result="done") >= 6)
        assert value(series, "gateway_inbound_processed_total", result="done") == 6
        assert value(series, "gateway_outbox_attempts_total", kind="sent") == 1
        assert value(series, "gateway_mail_total", source="smtp", code="250") == 6
        mine = list(Path(tempfile.gettempdir()).glob(f"{CHILDREN_DIR_PREFIX}{serve.proc.pid}-*"))
        assert len(mine) == 1 and list(mine[0].glob("counter_*.db"))
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0
        assert not mine[0].exists()  # removed at stop
    finally:
        serve.close()


def test_serve_removes_what_a_killed_run_left_of_its_children_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kill -9` leaves the children's directory behind; the next start removes it (its parent
    is gone), and keeps a running gateway's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    left = tmp_path / f"{CHILDREN_DIR_PREFIX}{ended.pid}-abc123"
    left.mkdir()
    (left / "counter_1.db").write_bytes(b"\0" * 16)
    running = tmp_path / f"{CHILDREN_DIR_PREFIX}{os.getpid()}-def456"
    running.mkdir()
    fresh = Path(fresh_children_dir())
    assert not left.exists() and running.exists()
    assert fresh.parent == tmp_path and list(fresh.iterdir()) == [] and fresh.stat().st_mode & 0o077 == 0


def _metrics_in(ready: str) -> str:
    match = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", ready)
    assert match, ready
    return match.group(1)


def _scrape_until(url: str, done: Any, timeout: float = 60) -> Series:
    """Scrape (bounded) until `done`: the children count in processes a test has no hook into."""
    deadline = time.monotonic() + timeout
    series = scrape(url)
    while not done(series) and time.monotonic() < deadline:
        time.sleep(0.05)
        series = scrape(url)
    return series


def test_a_scrape_while_the_database_is_unreachable_says_so_and_still_answers(tmp_path: Path) -> None:
    """The counters are still worth having when the database is gone; the queue series are not
    made up: they are missing, and gateway_database_up is 0."""
    from sqlalchemy import create_engine

    from gateway.api.metrics import MetricsListener

    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'gateway.db'}")  # its directory does not exist
    listener = MetricsListener(engine, "127.0.0.1", 0)
    listener.start()
    try:
        assert listener.address is not None
        series = scrape(f"http://127.0.0.1:{listener.address[1]}/metrics")
        assert value(series, "gateway_database_up") == 0
        assert not any(name == "gateway_queue_depth" for name, _ in series)
    finally:
        listener.stop()
        engine.dispose()
