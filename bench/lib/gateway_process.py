"""The real gateway in a benchmark's child process, as `gateway serve` or the Procfile runs it.

`gateway_main` is a Child target (bench/lib/procs.py). It answers ("ready", info) with the
ports it listens on (`smtp_port`, `http_port`), the studio owner's API `token` and, with
`seed`, the `conversation_id` replies go to; then it serves until told:

  ("wait_processed", n, timeout)  answer ("processed", (done in time, monotonic time, count))
                                  once the processor has threaded n messages (worker role)
  ("profile_start",) / ("profile_stop",)  smtp_ingest --profile's window, answered ("ok", None)
                                  and ("profile", report); the report is empty without `timings`
  ("stop",)                       stop the gateway, answer ("stopped", None)
"""
from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.lib import gateway_calls as gw
from bench.lib.procs import pin


@dataclass(frozen=True)
class GatewayOptions:
    roles: tuple[str, ...] = ("smtp", "web", "worker")
    settings: dict[str, Any] = field(default_factory=dict)  # Settings fields besides gateway_calls.settings'
    pin: bool = False              # to the server core (the HTTP benchmarks pin server and client apart)
    seed: bool = False             # threaded conversations before the start (the reply API's)
    seed_conversations: int = 1    # how many, each a guest of its own
    acceptor_log: bool = False     # the acceptor's INFO line when it stops (its group commits)
    timings: bool = False          # the profile window of smtp_ingest --profile
    cprofile: bool = False         # cProfile of the whole process, printed when it stops
    switch_interval: float | None = None  # the GIL switch interval in seconds (diagnosis)
    smtp_port: int = 0             # a fixed SMTP port: several `gateway smtp` share it (reuse_port)
    add_studio: bool = True        # a listening process adds the studio (only one of several may)


def gateway_main(pipe: Any, database_url: str, data_dir: str, options: GatewayOptions) -> None:
    if options.cprofile:  # where the gateway's CPU goes (all threads' main loops)
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(_run, pipe, database_url, data_dir, options)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
    else:
        _run(pipe, database_url, data_dir, options)
    sys.stdout.flush()
    pipe.send(("stopped", None))


def _run(pipe: Any, database_url: str, data_dir: str, options: GatewayOptions) -> None:
    if options.pin:
        pin("server")
    if options.switch_interval:
        sys.setswitchinterval(options.switch_interval)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` dumps every stack
    serving = bool({"smtp", "web"} & set(options.roles))
    # As `gateway serve` configures it (gateway/cli/common.py): aiosmtpd logs every command at INFO.
    logging.basicConfig(level=logging.WARNING,
                        format=f"{'gateway' if serving else 'worker'}: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if options.acceptor_log:
        logging.getLogger(gw.ACCEPTOR_LOGGER).setLevel(logging.INFO)
    import uvloop

    window = None
    if options.timings:
        from bench.lib.profiling import Window

        window = Window(gw.timed_functions())
    settings = gw.settings(data_dir, database_url, **options.settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(pipe, settings, options, serving, window))


def _poll_processed(engine: Any, count: int, timeout: float) -> tuple[bool, int]:
    """Every 10 ms until `count` stored messages are processed; the poll's cost is this
    process's, never the worker's, and its granularity is small beside a run's seconds."""
    until = time.monotonic() + timeout
    while True:
        done = gw.processed_count(engine)
        if done >= count or time.monotonic() >= until:
            return done >= count, done
        time.sleep(0.01)


async def _serve(pipe: Any, settings: Any, options: GatewayOptions, serving: bool, window: Any) -> None:
    info: dict[str, Any] = {}
    if options.seed:
        _, ids, info["token"] = await asyncio.to_thread(gw.seed_conversation, settings, options.seed_conversations)
        info["conversation_id"], info["conversation_ids"] = ids[0], ids
    listen = ("127.0.0.1", 0)
    smtp_listen = ("127.0.0.1", options.smtp_port)
    served = await gw.start_gateway(settings, options.roles,
                                    socket.create_server(smtp_listen, reuse_port=settings.reuse_port)
                                    if "smtp" in options.roles else None,
                                    socket.create_server(listen) if "web" in options.roles else None)
    gateway = served.gateway
    if gateway.smtp_address:
        info["smtp_port"] = gateway.smtp_address[1]
    if gateway.http_address:
        info["http_port"] = gateway.http_address[1]
    if serving and not options.seed and options.add_studio:  # a worker of its own finds the studio its SMTP process made
        info["token"] = gw.add_studio(gateway.engine)
    pipe.send(("ready", info))
    while True:
        command, *args = await asyncio.to_thread(pipe.recv)
        if command == "wait_processed":
            count, timeout = args
            if gateway.processor is not None:
                ok = await asyncio.to_thread(gateway.processor.wait_processed, count, timeout)
                pipe.send(("processed", (ok, time.monotonic(), gateway.processor.processed)))
            else:  # `gateway serve`'s worker child: watch the database
                ok, done = await asyncio.to_thread(_poll_processed, gateway.engine, count, timeout)
                pipe.send(("processed", (ok, time.monotonic(), done)))
        elif command == "profile_start":
            if window is not None:
                window.start()
            pipe.send(("ok", None))
        elif command == "profile_stop":
            pipe.send(("profile", window.stop() if window is not None else ""))
        elif command == "stop":
            await served.stop()
            gateway.engine.dispose()
            return
