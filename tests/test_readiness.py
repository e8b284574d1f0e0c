"""/readyz (issue 18 "Readiness"): the outbox backlog and its oldest age, the quarantine count,
and whether the relay was reachable at the last attempt, over HTTP on a running gateway.

Before, /readyz said {"status": "ok", "database": "ok", "writes": "ok"} while replies piled up
behind a relay that could not be reached, and said nothing of quarantined mail."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.relay_sink import RelaySink, free_port
from tests.test_outbound import inquiry, outbound_gateway, reply, send_due
from tests.test_quarantine import NO_SENDER


def test_an_unreachable_relay_is_degraded_until_a_reply_goes_out(tmp_path: Path, database_url: str) -> None:
    port = free_port()  # nothing listens here: connection refused, as a relay that is down
    running = outbound_gateway(tmp_path, database_url, f"smtp://127.0.0.1:{port}")
    try:
        studio, _, conversation = inquiry(running)
        reply(running, studio.token, conversation["id"])
        probe = running.api(None)
        before = probe.get("/readyz").json()
        assert before["status"] == "ok" and before["outbox"]["waiting"] == 1 and "relay" not in before

        assert send_due(running) == 1  # one attempt: refused
        ready = probe.get("/readyz")
        assert ready.status_code == 200  # mail is still received: degraded, not unavailable
        body = ready.json()
        assert body["status"] == "degraded" and body["relay"] == "unreachable at the last attempt"
        assert body["relay_unreachable_since"] and body["outbox"]["waiting"] == 1

        with RelaySink(port=port) as relay:  # the relay is back: the retry goes out
            assert send_due(running, later=timedelta(hours=2)) == 1
        assert len(relay.received) == 1
        after = probe.get("/readyz").json()
        assert after["status"] == "ok" and "relay" not in after and after["outbox"]["waiting"] == 0
    finally:
        running.stop()


def test_an_outbox_backlog_past_the_thresholds_is_degraded(tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None, ready_outbox_max_waiting=1)
    try:
        studio, _, conversation = inquiry(running)
        reply(running, studio.token, conversation["id"])
        assert running.api(None).get("/readyz").json()["status"] == "ok"  # one waiting: at the limit
        reply(running, studio.token, conversation["id"], text="Und noch etwas.")
        ready = running.api(None).get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded" and body["outbox"]["problem"] == "outbox backlog"
        assert body["outbox"]["waiting"] == 2 and 0 <= body["outbox"]["oldest_age_seconds"] < 600
    finally:
        running.stop()


def test_an_old_reply_in_the_outbox_is_degraded(tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None, ready_outbox_max_age=0.001)
    try:
        studio, _, conversation = inquiry(running)
        reply(running, studio.token, conversation["id"])
        body = running.api(None).get("/readyz").json()
        assert body["status"] == "degraded" and body["outbox"]["problem"] == "outbox backlog"
    finally:
        running.stop()


def test_the_quarantine_count_is_reported(tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None)
    try:
        running.add_studio("inkwell")
        assert running.send(NO_SENDER, "inkwell@mail.test", mail_from="").code == 250
        [result] = running.process()
        assert result.status == "quarantined"
        body = running.api(None).get("/readyz").json()
        assert body["quarantined"] == 1 and body["status"] == "ok"  # reported, not a reason to degrade
    finally:
        running.stop()
