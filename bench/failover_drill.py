"""Failover drill: a synchronous PostgreSQL pair loses its primary while mail streams in.

Issue 18 ("Replication and failover"): with a synchronous standby a `250` means the mail is on
two servers, so a crash of the primary loses nothing acknowledged, and the gateway follows the
promoted standby by itself. This builds the pair in a temporary directory with the
distribution's initdb, pg_basebackup and pg_ctl (as the `postgres` account; tests/pg_cluster.py),
sets `synchronous_standby_names` on the primary, runs the real `gateway serve` on the
multi-host URL `?host=primary&host=standby&target_session_attrs=read-write`, and sends mail
from S smtplib threads without pause (each message again after a 4xx or a dropped connection,
as an MTA would, 50 ms later). After W seconds it kills the primary (`pg_ctl stop -m
immediate`: a crash, no shutdown checkpoint), waits P seconds (the operator or the failover
manager deciding), promotes the standby (`pg_ctl promote`) and sends for A seconds more.
A thread polls the API and /readyz meanwhile.

Reported, and checked (exit status 1 when a check fails):
  - every message answered 250 is a row on the promoted standby (acknowledged vs stored);
  - no API answer was a 500 (the outage is 503 with Retry-After);
  - mail was accepted again after the promotion without restarting the gateway;
figures: seconds from the kill to the first 250 again and from the promotion to it, 4xx
answers during the outage, messages stored twice (a 250 lost with its connection).

    .venv/bin/python bench/failover_drill.py [--senders S] [--before W] [--pause P] [--after A]
        [--timeout T]
"""
from __future__ import annotations

import argparse
import contextlib
import email.policy
import json
import os
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.kill_drill import Server, gateway_command
from bench.lib.procs import free_port
from tests.pg_cluster import PgCluster, scratch_dir

DOMAIN = "mail.test"
STUDIO = "inkwell"
RETRY = 0.05
SMTP_POLICY = email.policy.SMTPUTF8  # CRLF line ends: smtplib sends bytes as they are


@dataclass
class Tally:
    """What the senders saw; shared by their threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[int, tuple[int, float]] = field(default_factory=dict)  # message -> (inbound id, when)
    temporary: list[tuple[int, float]] = field(default_factory=list)   # (code, when) of each 4xx
    dropped: list[float] = field(default_factory=list)                 # connection errors, when
    resent_after_drop: set[int] = field(default_factory=set)
    api: dict[int, int] = field(default_factory=dict)                  # API status -> count
    api_no_retry_after: int = 0
    drop_kinds: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)                   # 5xx answers (none expected)


def message(run: str, index: int) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"Gast {index} <guest{index}.{run}@example.org>"
    mail["To"] = f"{STUDIO}@{DOMAIN}"
    mail["Subject"] = f"Failover drill {run} #{index}"
    mail["Message-ID"] = f"<drill-{run}-{index}@example.org>"
    mail.set_content(f"Hallo, Termin-Anfrage Nummer {index} ({run}).\n" + "Größe & Preis? Wann ginge es?\n" * 40)
    return mail


def sender(port: int, run: str, first: int, step: int, stop: threading.Event, tally: Tally) -> None:
    index = first
    client: smtplib.SMTP | None = None
    dropped_before = False
    while not stop.is_set():
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, timeout=30)
            mail = message(run, index)
            client.ehlo_or_helo_if_needed()
            code, _ = client.mail(f"guest{index}.{run}@example.org")
            if code == 250:
                code, _ = client.rcpt(f"{STUDIO}@{DOMAIN}")
            if code == 250:
                code, text = client.data(mail.as_bytes(policy=SMTP_POLICY))
            else:
                text = b""
                client.rset()
        except smtplib.SMTPResponseException as exc:  # DATA refused before 354: the same as a 4xx
            with tally.lock:
                tally.temporary.append((exc.smtp_code, time.monotonic()))
            if not 400 <= exc.smtp_code < 500:
                tally.refused.append(f"message {index}: {exc.smtp_code} {exc.smtp_error!r}")
                break
            stop.wait(RETRY)
            continue
        except (OSError, smtplib.SMTPException) as exc:
            with tally.lock:
                tally.dropped.append(time.monotonic())
                tally.drop_kinds[type(exc).__name__] = tally.drop_kinds.get(type(exc).__name__, 0) + 1
            dropped_before = True
            with contextlib.suppress(Exception):
                if client is not None:
                    client.close()
            client = None
            stop.wait(RETRY)
            continue
        now = time.monotonic()
        if code == 250:
            inbound = int(text.decode().rsplit("(", 1)[1].rstrip(")"))
            with tally.lock:
                tally.acked[index] = (inbound, now)
                if dropped_before:
                    tally.resent_after_drop.add(index)
            dropped_before = False
            index += step
        elif 400 <= code < 500:
            with tally.lock:
                tally.temporary.append((code, now))
            stop.wait(RETRY)
        else:  # a bug of the drill or the gateway: stop this sender, say so at the end
            with tally.lock:
                tally.refused.append(f"message {index}: {code} {text!r}")
            break
    if client is not None:
        with contextlib.suppress(Exception):
            client.quit()


def api_poller(base_url: str, token: str, stop: threading.Event, tally: Tally) -> None:
    import httpx

    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        while not stop.is_set():
            try:
                answer = api.get("/api/v1/conversations", params={"limit": 1})
            except httpx.HTTPError:
                status = 0
            else:
                status = answer.status_code
                if status == 503 and "Retry-After" not in answer.headers:
                    tally.api_no_retry_after += 1
            with tally.lock:
                tally.api[status] = tally.api.get(status, 0) + 1
            stop.wait(0.1)


def stored(url: str) -> tuple[set[int], int]:
    """The inbound ids on the database, and how many messages are there more than once."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        ids = {int(row[0]) for row in conn.execute("SELECT id FROM inbound_mail")}
        twice = conn.execute("SELECT count(*) FROM (SELECT raw_sha256 FROM inbound_mail "
                             "GROUP BY raw_sha256 HAVING count(*) > 1) AS d").fetchone()
    return ids, int(twice[0]) if twice else 0


def unprocessed(url: str) -> int:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM inbound_mail WHERE status IN ('pending', 'processing')").fetchone()
    return int(row[0]) if row else 0


def drill(args: argparse.Namespace) -> bool:
    end = time.monotonic() + args.timeout
    root = scratch_dir("gw-failover-drill-")
    primary = PgCluster.primary(root)
    standby: PgCluster | None = None
    server: Server | None = None
    data_dir = Path(scratch_dir("gw-failover-data-"))
    try:
        primary.start()
        primary.sql("CREATE DATABASE gateway")
        standby = primary.standby(root)
        standby.start()
        primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
        primary.sql("SELECT pg_reload_conf()")
        while primary.sql("SELECT sync_state FROM pg_stat_replication") != [("sync",)]:
            if time.monotonic() > end:
                raise SystemExit("the standby never became synchronous")
            time.sleep(0.05)
        url = (f"postgresql://postgres@/gateway?host={primary.host}&host={standby.host}"
               "&target_session_attrs=read-write")
        print(f"  pair: primary {primary.host}, synchronous standby {standby.host}")

        smtp_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_DATA_DIR=str(data_dir), GATEWAY_DATABASE_URL=url, GATEWAY_SMTP_PORT=str(smtp_port),
                   GATEWAY_HTTP_PORT=str(http_port), GATEWAY_SMTP_HOST="127.0.0.1", GATEWAY_HTTP_HOST="127.0.0.1",
                   GATEWAY_MAIL_DOMAIN=DOMAIN, GATEWAY_FLOOD_MAX_NEW_PER_HOUR=str(10**9),
                   GATEWAY_LOG_LEVEL="INFO")
        add = subprocess.run(gateway_command() + ["studio", "add", STUDIO, "--name", "Inkwell",
                                                  "--owner-email", "owner@inkwell.example", "--json"],
                             env=env, cwd=str(data_dir), capture_output=True, text=True, timeout=120, check=True)
        token = json.loads(add.stdout)["token"]
        server = Server(env, str(data_dir), end)

        run = uuid.uuid4().hex[:6]
        tally = Tally()
        stop = threading.Event()
        threads = [threading.Thread(target=sender, args=(smtp_port, run, i, args.senders, stop, tally), daemon=True)
                   for i in range(args.senders)]
        threads.append(threading.Thread(target=api_poller, args=(f"http://127.0.0.1:{http_port}", token, stop, tally),
                                         daemon=True))
        for thread in threads:
            thread.start()
        try:
            stop.wait(min(args.before, end - time.monotonic()))
            acked_at_kill = len(tally.acked)
            primary.stop("immediate")
            killed = time.monotonic()  # pg_ctl -w returns once it is gone: a 250 after this is the standby's
            print(f"  primary killed after {acked_at_kill} messages answered 250")
            stop.wait(min(args.pause, end - time.monotonic()))
            promoted_start = time.monotonic()
            standby.promote()
            promoted = time.monotonic()
            print(f"  standby promoted {promoted - killed:.1f} s after the kill "
                  f"(pg_ctl promote took {promoted - promoted_start:.1f} s)")
            stop.wait(min(args.after, end - time.monotonic()))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        rows, twice = stored(standby.url("gateway"))
        # The worker role reconnects too: everything stored gets processed on the new primary.
        settle = min(end, time.monotonic() + 60)
        while (left := unprocessed(standby.url("gateway"))) and time.monotonic() < settle:
            time.sleep(0.2)
        print(f"  processed on the new primary: {len(rows) - left} of {len(rows)} "
              f"({time.monotonic() - settle + 60:.1f} s after the senders stopped)")
    finally:
        if server is not None:
            server.stop()
        if standby is not None:
            standby.destroy()
        primary.destroy()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)

    acked_ids = {inbound for inbound, _ in tally.acked.values()}
    lost = acked_ids - rows
    again = sorted(when for _, when in tally.acked.values() if when > killed)
    after_promotion = sum(1 for when in again if when > promoted)
    outage_4xx = [code for code, when in tally.temporary if when > killed]
    codes: dict[int, int] = {}
    for code in outage_4xx:
        codes[code] = codes.get(code, 0) + 1
    print(f"  answered 250: {len(tally.acked)}; stored on the promoted standby: {len(rows)}; "
          f"acknowledged but missing: {len(lost)}")
    if again:
        print(f"  first 250 after the kill: {again[0] - killed:.2f} s after it, "
              f"{again[0] - promoted:+.2f} s from the promotion (pg_ctl promote returns a moment after the "
              f"new primary takes writes); 250s after the kill: {len(again)}, after the promotion: {after_promotion}")
    print(f"  during the outage: {len(outage_4xx)} temporary answers {codes}, "
          f"{sum(1 for when in tally.dropped if when > killed)} connections closed {tally.drop_kinds} (the 421 after a session's 200 MAIL commands: retries count)")
    print(f"  stored twice: {twice} (a COMMIT that reached the standby but whose answer died with the primary: "
          f"451, sent again; {len(tally.resent_after_drop)} resent after a dropped connection)")
    print(f"  API answers: {dict(sorted(tally.api.items()))}; 503 without Retry-After: {tally.api_no_retry_after}")
    checks = [
        ("every stored message processed (the worker reconnected)", left == 0, f"{left} left"),
        ("no permanent refusal", not tally.refused, "; ".join(tally.refused[:3])),
        ("every 250 is stored on the promoted standby", not lost, f"{len(lost)} missing"),
        ("mail accepted again after the promotion, without a restart", after_promotion > 0,
         "no 250 after the promotion"),
        ("no API 500 during the failover", 500 not in tally.api, f"{tally.api.get(500)} answers 500"),
        ("every API 503 has Retry-After", tally.api_no_retry_after == 0, f"{tally.api_no_retry_after} without"),
    ]
    for name, ok, detail in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
    return all(ok for _, ok, _ in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--senders", type=int, default=8, help="smtplib threads sending without pause")
    parser.add_argument("--before", type=float, default=10, help="seconds of mail before the primary is killed")
    parser.add_argument("--pause", type=float, default=5, help="seconds between the kill and the promotion")
    parser.add_argument("--after", type=float, default=10, help="seconds of mail after the promotion")
    parser.add_argument("--timeout", type=float, default=300, help="global limit in seconds (default 300)")
    args = parser.parse_args()
    print(f"failover drill: gateway serve on a synchronous PostgreSQL pair, {args.senders} senders, "
          f"primary killed after {args.before:.0f} s, promotion {args.pause:.0f} s later")
    ok = drill(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
