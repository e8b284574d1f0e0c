"""What an outside client sees: `gateway serve` started by its own command, nothing pinned, wrk.

    .venv/bin/python bench/outside_check.py [--what webhooks|replies|both] [--rounds R] [--seconds S]
        [--connections C] [--threads T] [--warmup S] [--log-level LEVEL] [--workers N] [--set NAME=VALUE]

The other HTTP benchmarks start the gateway in a child process of their own (bench/lib/
gateway_process.py), pin server and client to different cores, warm the servers up and send
with our own raw-asyncio client. An operator, or an independent measurement, does none of
that: it runs `gateway serve` with its defaults (INFO logging, its worker processes), lets the
kernel place every process, and sends from its own client at once. This script does the same,
so a figure that holds only in our own harness shows here:

- gateway: `python -m gateway.cli serve` in a fresh data directory (SQLite), configured only
  by GATEWAY_* variables as an operator would (Mailgun enabled; flood and reply limits raised,
  which an outside load test must do too, or most of its posts are refused by design); the
  studio made by `gateway studio add`; ready when it logs "gateway ready"; stopped by SIGTERM.
- baseline: the do-nothing Litestar routes of bench/lib/baselines.py, unpinned.
- client: wrk (`apt-get install wrk`: C, one event loop per thread, a few per cent of a core),
  T threads and C keep-alive connections for S seconds, each request a distinct pre-built one
  (a webhook's token may be used once), latency percentiles from wrk's own histogram.
  `--warmup S` first sends S seconds unmeasured (none by default: an outside client has none).

Rounds alternate baseline and gateway; medians (min-max) at the end. Targets as in
webhook_ingest.py (requests/s >= 30 % of the baseline's) and outbound.py (reply p99 < 3x).
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.baselines import litestar_baseline_main  # noqa: E402
from bench.lib.gateway_calls import MAILGUN_SIGNING_KEY, SECRET  # noqa: E402
from bench.lib.mails import MAIL_DOMAIN, STUDIO_SLUG  # noqa: E402
from bench.lib.procs import Child, connect, free_port  # noqa: E402
from bench.lib.report import met, spread  # noqa: E402
from bench.outbound import reply_posts  # noqa: E402
from bench.webhook_ingest import mailgun_posts  # noqa: E402

SEPARATOR = b"\n--wrk-request-" + uuid.uuid4().hex.encode() + b"--\n"
# Each wrk thread sends its own share of the file's requests (thread i: i, i+T, ...), again
# from the start when it has sent them all (the do-nothing route checks no tokens).
WRK_SCRIPT = r"""
local threads = {}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local sep, step = args[2], tonumber(args[3])
  mine = {}
  local start, index = 1, 0
  while true do
    local i, j = string.find(data, sep, start, true)
    local piece = string.sub(data, start, (i or 0) - 1)
    if i == nil then piece = string.sub(data, start) end
    if #piece > 0 and index % step == id then table.insert(mine, piece) end
    index = index + 1
    if i == nil then break end
    start = j + 1
  end
  next_one = 1
  wrapped = 0
end
function request()
  local r = mine[next_one]
  next_one = next_one + 1
  if next_one > #mine then next_one = 1; wrapped = wrapped + 1 end
  return r
end
function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do wraps = wraps + (thread:get("wrapped") or 0) end
  io.write(string.format('WRK-RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, wraps))
end
"""


def wrk(port: int, requests: list[bytes], seconds: float, connections: int, threads: int,
        workdir: Path) -> dict[str, Any]:
    """wrk against 127.0.0.1:`port` sending `requests` (raw HTTP/1.1, each used once per round
    of the file): its summary with the rate of answers that were not errors."""
    data, script = workdir / "requests.bin", workdir / "requests.lua"
    data.write_bytes(SEPARATOR.join(requests))
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s",
                          "-s", str(script), f"http://127.0.0.1:{port}/", "--", str(data),
                          SEPARATOR.decode(), str(threads)],
                         capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-800:]} {out.stderr[-800:]}")
    result = json.loads(line.split(" ", 1)[1])
    ok = result["requests"] - result["status_errors"] - result["socket_errors"]
    result["ok"] = ok
    result["rate"] = ok / (result["duration_us"] / 1e6)
    return result


class ServeProcess:
    """`gateway serve` as an operator starts it: its command, GATEWAY_* variables, a data directory."""

    def __init__(self, data_dir: Path, log_level: str | None, workers: int | None,
                 extra: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update({
            "GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_SECRET_KEY": SECRET, "GATEWAY_MAIL_DOMAIN": MAIL_DOMAIN,
            "GATEWAY_HTTP_HOST": "127.0.0.1", "GATEWAY_HTTP_PORT": str(self.http_port),
            "GATEWAY_SMTP_HOST": "127.0.0.1", "GATEWAY_SMTP_PORT": str(free_port()),
            "GATEWAY_MAILGUN_SIGNING_KEY": MAILGUN_SIGNING_KEY,
            "GATEWAY_FLOOD_MAX_NEW_PER_HOUR": "1000000000", "GATEWAY_REPLY_MAX_PER_CONVERSATION_PER_HOUR": "1000000000",
        })
        if log_level:
            self.env["GATEWAY_LOG_LEVEL"] = log_level
        if workers is not None:
            self.env["GATEWAY_SERVE_WORKER_PROCESSES"] = str(workers)
        self.env.update(extra or {})
        self.log_path = data_dir.parent / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=self.env, cwd=self.data_dir,
                             capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"gateway {' '.join(args)}: {out.stderr[-800:]}")
        return out.stdout

    def add_studio(self) -> str:
        made = json.loads(self.command("studio", "add", STUDIO_SLUG, "--name", "Inkwell Tattoo",
                                       "--owner-email", "owner@inkwell.example", "--json"))
        return str(made["token"])

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=self.env,
                                        cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 180
        while b"gateway ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway serve did not start: {self.log_path.read_text()[-1500:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_lines(self) -> int:
        return self.log_path.read_bytes().count(b"\n")


def api(port: int, method: str, path: str, token: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def first_conversation(serve: ServeProcess, token: str) -> int | str:
    """One guest inquiry through the Mailgun webhook, then its conversation's id once threaded."""
    raw = mailgun_posts({"http_port": serve.http_port}, 1)[0]
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    status, answer = api(serve.http_port, "POST", "/webhooks/mailgun/mime", token, body,
                         {"Content-Type": headers["Content-Type"]})
    if status != 200:
        raise RuntimeError(f"seed inquiry answered {status}: {answer[:300]!r}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, answer = api(serve.http_port, "GET", "/api/v1/conversations", token)
        items = json.loads(answer).get("items", []) if status == 200 else []
        if items:
            return items[0]["id"]
        time.sleep(0.1)
    raise RuntimeError("the seed inquiry was not threaded within 60 s")


def measure(what: str, args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """One round of `what`: the do-nothing route, then `gateway serve`; (baseline, gateway, note)."""
    build: Callable[[dict[str, Any], int], list[bytes]] = mailgun_posts if what == "webhooks" else reply_posts
    count = args.requests
    ctx = mp.get_context("spawn")
    child = Child(ctx, litestar_baseline_main, "mailgun" if what == "webhooks" else "reply", False,
                  name="baseline", daemon=False)
    try:
        info = child.expect("ready", "starting the baseline", limit=60)
        info.update(conversation_id=1, token="none")
        requests = build(info, count)
        if args.warmup:
            wrk(info["http_port"], requests, args.warmup, args.connections, args.threads, workdir)
        base = wrk(info["http_port"], requests, args.seconds, args.connections, args.threads, workdir)
        child.stop("stopping the baseline")
    finally:
        child.close()

    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(mode=0o700)
    serve = ServeProcess(data_dir, args.log_level, args.workers,
                         {f"GATEWAY_{name.upper()}": value for name, value in (pair.split("=", 1) for pair in args.set)})
    token = serve.add_studio()
    serve.start()
    try:
        info = {"http_port": serve.http_port, "token": token}
        if what == "replies":
            info["conversation_id"] = first_conversation(serve, token)
        requests = build(info, count)
        if args.warmup:  # its own requests: a webhook token is taken once
            wrk(serve.http_port, build(info, count), args.warmup, args.connections, args.threads, workdir)
        ours = wrk(serve.http_port, requests, args.seconds, args.connections, args.threads, workdir)
    finally:
        serve.stop()
    note = f"log lines {serve.log_lines()}"
    if what == "webhooks":
        with connect(f"sqlite:///{data_dir}/gateway.db") as conn:
            stored = int(conn.exec_driver_sql("SELECT count(*) FROM inbound_mail WHERE source = 'mailgun'")
                         .scalar_one())
        note += f", stored rows {stored} for {ours['ok']} answered 200"
        if ours["wrapped"]:
            note += " (REQUESTS RAN OUT: raise --requests)"
    return base, ours, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=["webhooks", "replies", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="measured seconds per run")
    parser.add_argument("--requests", type=int, default=24000, help="distinct requests built per run")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured seconds first (default none)")
    parser.add_argument("--log-level", help="GATEWAY_LOG_LEVEL (default: the gateway's, INFO)")
    parser.add_argument("--workers", type=int, help="GATEWAY_SERVE_WORKER_PROCESSES (default: the gateway's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another setting, as GATEWAY_NAME=VALUE (diagnosis)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found (apt-get install wrk)")
        return 2
    whats = ["webhooks", "replies"] if args.what == "both" else [args.what]
    print(f"outside check: gateway serve (its command, SQLite, log level {args.log_level or 'default'}, "
          f"workers {args.workers if args.workers is not None else 'default'}), nothing pinned, wrk -t{args.threads} "
          f"-c{args.connections} {args.seconds:g} s, warm-up {args.warmup:g} s, cpus={os.cpu_count()}")
    shares: dict[str, list[float]] = {}
    p99s: dict[str, list[tuple[float, float]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="gwoutside-"))
    try:
        for round_no in range(1, args.rounds + 1):
            for what in whats:
                base, ours, note = measure(what, args, workdir)
                share = ours["rate"] / base["rate"] * 100
                p99_ratio = ours["p99_us"] / base["p99_us"]
                shares.setdefault(what, []).append(share)
                p99s.setdefault(what, []).append((base["p99_us"] / 1000, ours["p99_us"] / 1000))
                print(f"round {round_no} {what:8} baseline {base['rate']:7.0f} req/s p50 {base['p50_us'] / 1000:5.1f} ms "
                      f"p99 {base['p99_us'] / 1000:5.1f} ms | gateway {ours['rate']:7.0f} req/s "
                      f"p50 {ours['p50_us'] / 1000:5.1f} ms p99 {ours['p99_us'] / 1000:5.1f} ms "
                      f"max {ours['max_us'] / 1000:5.0f} ms | {share:5.1f} % of the rate, p99 {p99_ratio:.2f}x | "
                      f"errors {ours['status_errors']}+{ours['socket_errors']} | {note}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for what, values in shares.items():
        ratios = [g / b for b, g in p99s[what]]
        if what == "webhooks":
            print(f"webhooks: {spread(values, '.1f', ' %')} of the baseline's requests/s over {len(values)} rounds "
                  f"(target >= 30 %) {met(statistics.median(values) >= 30)}")
        else:
            print(f"replies: p99 {spread(ratios, '.2f', 'x')} the baseline's over {len(ratios)} rounds "
                  f"(baseline {spread([b for b, _ in p99s[what]], '.1f', ' ms')}, gateway "
                  f"{spread([g for _, g in p99s[what]], '.1f', ' ms')}) (target < 3x) "
                  f"{met(statistics.median(ratios) < 3)}; rate {spread(values, '.1f', ' %')} of the baseline's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
