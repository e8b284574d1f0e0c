"""The processes of a benchmark run: children on a pipe, deadlines, cores, CPU accounting,
throwaway databases and Postfix's smtp-sink.

Every server and client runs in its own spawned process (no inherited threads, engines or
loops), started and always ended by the script that measures it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
_TICK = os.sysconf("SC_CLK_TCK")


class BenchAborted(Exception):
    """A phase ran past the deadline or a child process failed: stop, clean up, say why."""


class Deadline:
    """The whole run's time limit (`--timeout`); every wait is bounded by what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, what: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchAborted(f"global timeout of {self.seconds:.0f} s reached while {what}; "
                               "raise --timeout or lower --messages")
        return left


def _child_entry(target: Callable[..., None], pipe: Any, *args: Any) -> None:
    try:
        target(pipe, *args)
    except BaseException:
        with contextlib.suppress(Exception):  # the parent may be gone already
            pipe.send(("error", traceback.format_exc()))
        sys.exit(1)


class Child:
    """`target(pipe, *args)` in a child process, talking over a duplex pipe.

    The child sends `(kind, payload)` tuples and receives `(command, *args)`; an exception in
    the child arrives as `("error", traceback)`. Every wait is bounded by `limit` and by the
    deadline, if one is given; `close` always ends the process.
    """

    def __init__(self, ctx: Any, target: Callable[..., None], *args: Any, name: str,
                 deadline: Deadline | None = None, daemon: bool = True) -> None:
        """`daemon=False` for a child that starts children of its own (`gateway serve`'s worker);
        close() ends it all the same, and its own children end with it."""
        self.pipe, child_end = ctx.Pipe()
        self.name = name
        self.deadline = deadline
        self.proc = ctx.Process(target=_child_entry, args=(target, child_end, *args), name=name, daemon=daemon)
        self.proc.start()
        child_end.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, kind: str, what: str, limit: float | None = None) -> Any:
        wait = limit
        if self.deadline is not None:
            left = self.deadline.left(what)
            wait = left if limit is None else min(limit, left)
        if not self.pipe.poll(wait):
            if self.deadline is not None:
                self.deadline.left(what)
            raise BenchAborted(f"{self.name}: no answer within {wait:.0f} s while {what}")
        try:
            got, payload = self.pipe.recv()
        except EOFError:
            self.proc.join(timeout=5)
            raise BenchAborted(f"{self.name} exited (code {self.proc.exitcode}) while {what}") from None
        if got == "error":
            raise BenchAborted(f"{self.name} failed while {what}:\n{payload}")
        if got != kind:
            raise BenchAborted(f"{self.name}: expected {kind!r}, got {got!r} while {what}")
        return payload

    def send(self, *message: Any) -> None:
        self.pipe.send(message)

    def stop(self, what: str, limit: float = 60) -> None:
        """Ask a server to stop and wait until it has (it answers "stopped")."""
        self.send("stop")
        self.expect("stopped", what, limit)

    def close(self) -> None:
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.pipe.close()


def run_child(ctx: Any, target: Callable[..., None], *args: Any, name: str, limit: float = 600) -> Any:
    """Run `target(pipe, *args)` in a child until it sends ("result", value); return the value."""
    child = Child(ctx, target, *args, name=name)
    try:
        return child.expect("result", f"running {name}", limit)
    finally:
        child.close()


def pin(role: str) -> None:
    """Server on one core, client on another: on two cores the scheduler otherwise moves them
    about, and the webhook baseline swung between 10,000 and 16,000 requests/s from run to run."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0] if role == "server" else cpus[1]})


def _stat_cpu(path: str | Path) -> float:
    """utime + stime in seconds from a /proc stat file; 0 when it is gone."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_cpu(pid: int | str, tid: int | None = None) -> float:
    """CPU seconds of a process (all its threads), or of one of its threads."""
    return _stat_cpu(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (the kernel's `comm`) of another process, same names summed."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        found[name] = found.get(name, 0.0) + _stat_cpu(task / "stat")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink (a C server that accepts everything) on a loopback port: the port."""
    port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        sink.terminate()
        sink.wait(10)


def pg_admin_url() -> str:
    """Only used to CREATE and DROP throwaway databases."""
    return os.environ.get("GATEWAY_BENCH_DATABASE_URL", DEFAULT_PG_URL)


@contextlib.contextmanager
def throwaway_database(backend: str) -> Iterator[tuple[str, str]]:
    """(database URL, data directory) for one run: a fresh SQLite file, or a PostgreSQL database
    `gwbench_<random>` created from GATEWAY_BENCH_DATABASE_URL. Removed afterwards, whatever happened."""
    from sqlalchemy import create_engine, text

    from bench.lib.gateway_calls import normalise_url

    data_dir = tempfile.mkdtemp(prefix="gwbench-")
    if backend == "sqlite":
        try:
            yield f"sqlite:///{data_dir}/gateway.db", data_dir
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        return
    name = f"gwbench_{uuid.uuid4().hex[:12]}"
    admin_url = pg_admin_url()
    admin = create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin_url.rsplit("/", 1)[0] + "/" + name, data_dir
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def connect(database_url: str) -> Iterator[Any]:
    """A connection to a run's database for the checks after it, on an engine of its own."""
    from sqlalchemy import create_engine

    from bench.lib.gateway_calls import normalise_url

    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
