"""One measurement: a load client process against a server process, turned into a figure.

The server is already running (a Child that answered "ready"); the client is started here,
builds its load untimed, and sends on "go" while the server's CPU is read from /proc.
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from bench.lib.loadclient import ClientResult, HttpResult, http_client_main, smtp_client_main
from bench.lib.procs import BenchAborted, Child, Deadline, proc_cpu, thread_cpu
from bench.lib.report import percentile


@dataclass
class SmtpFigure:
    rate: float
    p50_ms: float                # send → 250: from connect (per-conn) or MAIL FROM (reuse)
    p99_ms: float
    dot_p50_ms: float            # end of DATA → 250: from writing the final dot
    dot_p99_ms: float
    ok: int
    sent: int
    codes: Counter
    errors: Counter
    timed_out: bool
    t_first: float
    avg_size: float
    server_cpu: float = 0.0      # share of one core used by the server process during the run
    client_cpu: float = 0.0
    pipelining: bool | None = None  # whether the server offered PIPELINING (None: no connection)


def measure_smtp(ctx: Any, deadline: Deadline, port: int, count: int, size: str, connections: int, mode: str,
              label: str, server_pid: int, on_go: Callable[[], None] | None = None) -> tuple[SmtpFigure, ClientResult]:
    """Send `count` messages of `size` to `port`; acceptance rate = 250s / (last 250 − first send)."""
    run = uuid.uuid4().hex[:6]
    client = Child(ctx, smtp_client_main, port, run, count, size, connections, mode,
                   max(1.0, deadline.left(label) - 5), name=f"client[{label}]", deadline=deadline)
    try:
        avg_size = client.expect("ready", f"building messages for {label}")
        if on_go:
            on_go()
        server_before, wall_before = proc_cpu(server_pid), time.monotonic()
        client.send("go")
        result: ClientResult = client.expect("result", f"sending ({label})")
        server_cpu = (proc_cpu(server_pid) - server_before) / max(1e-9, time.monotonic() - wall_before)
    finally:
        client.close()
    lat, dot = sorted(result.latencies), sorted(result.dot_latencies)
    span = result.t_last - result.t_first
    if len(result.pipelining) > 1:
        raise BenchAborted(f"{label}: the server offered PIPELINING on some connections only {dict(result.pipelining)}")
    figure = SmtpFigure(rate=result.ok / span if span > 0 else 0.0, p50_ms=1000 * percentile(lat, 0.50),
                        p99_ms=1000 * percentile(lat, 0.99), dot_p50_ms=1000 * percentile(dot, 0.50),
                        dot_p99_ms=1000 * percentile(dot, 0.99), ok=result.ok, sent=result.sent,
                        codes=result.codes, errors=result.errors, timed_out=result.timed_out,
                        t_first=result.t_first, avg_size=avg_size, server_cpu=server_cpu,
                        client_cpu=result.cpu_seconds / span if span > 0 else 0.0,
                        pipelining=next(iter(result.pipelining), None))
    if result.timed_out:
        raise BenchAborted(f"client timed out in {label} after {result.ok} of {count} messages")
    return figure, result


@dataclass
class HttpFigure:
    name: str
    count: int
    elapsed: float
    statuses: dict[int, int]
    p50: float                   # client-side latency, ms
    p99: float
    server_cpu: float            # CPU seconds of the server process during the load

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rate(self) -> float:
        """Successful answers per second, first request → last answer."""
        return self.ok / self.elapsed

    @property
    def cpu(self) -> float:
        """Server CPU per request, ms."""
        return self.server_cpu / self.count * 1000

    @property
    def cores(self) -> float:
        """Server CPU seconds per wall second during the load."""
        return self.server_cpu / self.elapsed


def measure_http(ctx: Any, server: Callable[..., None], server_args: tuple[Any, ...],
              build: Callable[[dict[str, Any], int], list[bytes]], count: int, connections: int, name: str,
              warmup: int = 0, spy: str | None = None, show_threads: bool = False, pin: bool = True) -> HttpFigure:
    """Start the server (pinned to the server core by its target), send it `count` requests from
    `build` over keep-alive connections from the client core, stop it. `spy`: record the server
    with py-spy (not a dependency: pip install py-spy) as raw folded stacks into that file;
    `show_threads`: print the server's CPU per request by thread before it stops; `pin=False`:
    the client runs on any core (the server's pinning is its target's own choice)."""
    process = Child(ctx, server, *server_args, name=name, daemon=False)  # `gateway serve` starts a worker child
    try:
        info = process.expect("ready", f"starting {name}", limit=120)
        client = Child(ctx, http_client_main, info, build, count, connections, warmup, pin,
                       name=f"client[{name}]")
        try:
            client.expect("ready", f"building requests for {name}", limit=300)
            sampler = None
            if spy:
                sampler = subprocess.Popen(["py-spy", "record", "--pid", str(process.pid), "--format", "raw",
                                            "--rate", "250", "--output", spy, "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # let py-spy attach before the load starts
            cpu_before, threads_before = proc_cpu(process.pid), thread_cpu(process.pid)
            client.send("go")
            result: HttpResult = client.expect("result", f"loading {name}", limit=900)
            cpu = proc_cpu(process.pid) - cpu_before
            if show_threads:
                threads = {thread: (used - threads_before.get(thread, 0.0)) / count * 1000
                           for thread, used in thread_cpu(process.pid).items()}
                busy = ", ".join(f"{thread} {ms:.3f}" for thread, ms in sorted(threads.items(), key=lambda t: -t[1])
                                 if ms > 0.005)
                print(f"  {name}: CPU ms/request by thread: {busy}", flush=True)
            if sampler is not None:
                sampler.send_signal(2)
                sampler.wait(60)
        finally:
            client.close()
        process.stop(f"stopping {name}")
    finally:
        process.close()
    figure = HttpFigure(name, count, result.elapsed, result.statuses, 1000 * percentile(result.latencies, 0.50),
                        1000 * percentile(result.latencies, 0.99), cpu)
    if figure.ok != count:
        print(f"  {name}: answers {result.statuses}", file=sys.stderr)
    return figure
