"""Kill drill: `gateway serve` killed with SIGKILL while mail streams in loses nothing it answered 250.

Issue 20 ("Nothing lost"): every `250` is listed afterwards, and kill -9 under load still loses
nothing. This runs the real `gateway serve` command (SMTP, HTTP, and its worker children) on a
fresh SQLite file or a throwaway PostgreSQL database, sends N of smtp_ingest's 4 KB German
mails over C kept, pipelining connections, and kills the server process with SIGKILL each time
another fraction of the mail has been answered (--kills, spread evenly). Each time it starts
`gateway serve` again on the same ports and data, and the client goes on as a sending MTA
would: a transaction cut off without its `250` is sent again once the server answers.

Checks (exit status 1 when one fails):
  - every inbound id a `250` named is a stored row;
  - the worker children died with their parent (no worker outlives its server);
  - within a minute of the last 250, every stored message is processed (none left pending or
    claimed: a dead worker's claims may not wait out the processor's five-minute lease);
  - the API lists a conversation for every message that got a `250` (its unique subject).
Reported: messages stored twice because their `250` was lost with the connection (the sender
could not know; the processor files the copy in the same conversation by its Message-ID).

    .venv/bin/python bench/kill_drill.py [--messages N] [--connections C] [--kills K]
        [--database sqlite|postgres] [--victim server|worker] [--timeout S]

--victim worker kills one worker child instead (as the OOM killer would): serve starts another
and puts back at once the mail the dead one had claimed, so everything is still processed
without waiting out the processor's five-minute lease.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.loadclient import _close, _open, _transaction
from bench.lib.mails import MAIL_DOMAIN, STUDIO_SLUG, make_message
from bench.lib.procs import connect, free_port, throwaway_database

_ID = re.compile(rb"\((\d+)\)")


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


class Server:
    """One `gateway serve` process, its log read by a thread, its readiness awaited."""

    def __init__(self, env: dict[str, str], cwd: str, deadline: float) -> None:
        self.proc = subprocess.Popen(gateway_command() + ["serve"], env=env, cwd=cwd, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.log: list[str] = []
        self._ready = threading.Event()
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        if not self._ready.wait(max(1.0, deadline - time.monotonic())):
            self.proc.kill()
            raise SystemExit("gateway serve did not get ready:\n" + "".join(self.log[-20:]))
        ready = next(line for line in self.log if "gateway ready" in line)
        self.workers = [int(pid) for pid in re.findall(r"\d+", ready.split("worker running in process")[1].split("(")[0])] \
            if "worker running in process" in ready else []

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.log.append(line)
            if "gateway ready" in line:
                self._ready.set()
        self._ready.set()

    def live_workers(self) -> list[int]:
        """The worker children now: every one started, less those that exited."""
        text = "".join(self.log)
        exited = {int(pid) for pid in re.findall(r"worker process (\d+) exited", text)}
        return [pid for pid in map(int, re.findall(r"worker process (\d+) started", text)) if pid not in exited]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def send_all(port: int, messages: list[tuple[str, bytes, bool]], connections: int, acked: dict[int, int],
                   stored_twice: list[int], until: float) -> None:
    """Every message until it gets its 250, C lanes; `acked` maps message index -> inbound id."""
    async def lane(index: int) -> None:
        reader = writer = None
        pipelining = False
        for number in range(index, len(messages), connections):
            tries = 0
            while time.monotonic() < until:
                try:
                    if writer is None:
                        reader, writer, pipelining = await _open(port)
                    assert reader is not None
                    code, text, _ = await _transaction(reader, writer, messages[number], pipelining)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    await _close(writer)
                    reader = writer = None
                    tries += 1
                    await asyncio.sleep(0.05)     # the server is down: retry as an MTA would, soon
                    continue
                if code == 250:
                    match = _ID.search(text)
                    acked[number] = int(match.group(1)) if match else -1
                    if tries:
                        stored_twice.append(number)   # possibly: the first try may have been stored
                    break
                if 400 <= code < 500:
                    await asyncio.sleep(0.05)
                    continue
                raise SystemExit(f"message {number} refused: {code} {text!r}")
        if writer is not None:
            await _close(writer)

    await asyncio.gather(*(lane(i) for i in range(connections)))


def processed(url: str) -> int:
    from sqlalchemy import text as sql

    with connect(url) as conn:
        return conn.execute(sql("SELECT count(*) FROM inbound_mail WHERE status NOT IN ('pending', 'processing')"))\
            .scalar_one()


def list_subjects(base_url: str, token: str, until: float) -> set[str]:
    import httpx

    subjects: set[str] = set()
    cursor: str | None = None
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        while time.monotonic() < until:
            page = api.get("/api/v1/conversations", params={"limit": 200} | ({"cursor": cursor} if cursor else {}))
            page.raise_for_status()
            body = page.json()
            subjects.update(item["subject"] for item in body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return subjects


def drill(args: argparse.Namespace) -> bool:
    deadline = time.monotonic() + args.timeout
    with throwaway_database(args.database) as (url, data_dir):
        smtp_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_DATA_DIR=data_dir, GATEWAY_DATABASE_URL=url, GATEWAY_SMTP_PORT=str(smtp_port),
                   GATEWAY_HTTP_PORT=str(http_port), GATEWAY_SMTP_HOST="127.0.0.1", GATEWAY_HTTP_HOST="127.0.0.1",
                   GATEWAY_MAIL_DOMAIN=MAIL_DOMAIN, GATEWAY_FLOOD_MAX_NEW_PER_HOUR=str(10**9),
                   GATEWAY_LOG_LEVEL="INFO")   # the "gateway ready" line is INFO
        add = subprocess.run(gateway_command() + ["studio", "add", STUDIO_SLUG, "--name", "Inkwell",
                                                  "--owner-email", "owner@inkwell.example", "--json"],
                             env=env, cwd=data_dir, capture_output=True, text=True, timeout=120, check=True)
        token = json.loads(add.stdout)["token"]
        run = uuid.uuid4().hex[:6]
        messages = [make_message(run, i, "small") for i in range(args.messages)]
        subjects = {i: str(email.message_from_bytes(data, policy=email.policy.default)["subject"])
                    for i, (_, data, _) in enumerate(messages)}

        acked: dict[int, int] = {}
        stored_twice: list[int] = []
        server = Server(env, data_dir, deadline)
        orphans: list[int] = []
        kills = 0

        async def killer() -> None:
            nonlocal server, kills
            for k in range(1, args.kills + 1):
                if args.victim == "worker":     # a child alone, mid-batch, as the OOM killer would
                    while await asyncio.to_thread(processed, url) < args.messages * k / (args.kills + 1) \
                            and time.monotonic() < deadline:
                        await asyncio.sleep(0.005)
                    pid = server.live_workers()[0]
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                    print(f"  kill {kills}: SIGKILL of worker {pid} with {await asyncio.to_thread(processed, url)} "
                          f"of {args.messages} processed")
                    continue
                while len(acked) < args.messages * k / (args.kills + 1) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                victim = server
                await asyncio.to_thread(victim.kill)
                kills += 1
                for pid in victim.workers:      # they stop when the parent's end of the pair closes
                    gone_by = time.monotonic() + 60
                    while _alive(pid) and time.monotonic() < gone_by:
                        await asyncio.sleep(0.05)
                    if _alive(pid):
                        orphans.append(pid)
                print(f"  kill {kills}: SIGKILL at {len(acked)} of {args.messages} answered 250; restarting")
                server = await asyncio.to_thread(Server, env, data_dir, deadline)

        async def both() -> None:
            await asyncio.gather(send_all(smtp_port, messages, args.connections, acked, stored_twice, deadline),
                                 killer())

        started = time.monotonic()
        asyncio.run(both())
        print(f"  sent: {len(acked)} of {args.messages} answered 250 in {time.monotonic() - started:.1f} s, "
              f"{kills} kills, {len(stored_twice)} resent after a lost connection")

        # Everything stored must be processed by the last server's workers.
        from sqlalchemy import text as sql

        settle = min(deadline, time.monotonic() + 60)   # well inside the processor's 5-minute lease
        while time.monotonic() < settle:
            with connect(url) as conn:
                left = conn.execute(sql("SELECT count(*) FROM inbound_mail WHERE status IN ('pending', 'processing')"))\
                    .scalar_one()
            if not left:
                break
            time.sleep(0.1)
        with connect(url) as conn:
            rows = dict(conn.execute(sql("SELECT id, status FROM inbound_mail")).all())
        listed = list_subjects(f"http://127.0.0.1:{http_port}", token, deadline)
        server.stop()
        freed = sum(int(n) for n in re.findall(r"died holding (\d+) message", "".join(server.log)))
        if args.victim == "worker":
            print(f"  claims of killed workers put back at once: {freed} message(s)")
        for pid in server.workers:
            if _alive(pid):
                orphans.append(pid)

    ids = [i for i in acked.values()]
    lost = [i for i in ids if i not in rows]
    unprocessed = {s: n for s, n in _count(rows.values()).items() if s in ("pending", "processing")}
    unlisted = [n for n in acked if subjects[n] not in listed]
    extra = len(rows) - len(set(ids))
    checks = [
        ("every 250 is a stored row", not lost and -1 not in ids, f"{len(lost)} missing"),
        ("worker children died with their server", not orphans, f"orphans {orphans}"),
        ("every stored message processed", not unprocessed, f"left {unprocessed}"),
        ("every 250'd message listed by the API", not unlisted, f"{len(unlisted)} not listed"),
    ]
    print(f"  stored rows {len(rows)} for {len(set(ids))} answered 250 ({extra} stored whose 250 was lost, "
          f"statuses {_count(rows.values())})")
    for name, ok, detail in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
    return all(ok for _, ok, _ in checks)


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--victim", choices=("server", "worker"), default="server",
                        help="kill the server process (its children stop with it) or one worker child")
    parser.add_argument("--timeout", type=float, default=600, help="global limit in seconds (default 600)")
    args = parser.parse_args()
    print(f"kill drill: gateway serve on {args.database}, {args.messages} mails over {args.connections} "
          f"connections, SIGKILL of the {args.victim} {args.kills} times under load")
    ok = drill(args)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
