"""`gateway serve`'s worker in processes of its own: processing beside the servers, not under their GIL.

One Python process runs one thread at a time. With SMTP, HTTP and the processor in one process,
parsing and threading mail took turns with accepting it, on one core of the machine's two, and
mail became visible at about a third of the rate a do-nothing SMTP server accepts it
(bench/smtp_ingest.py, end to end). `gateway serve` therefore starts the Procfile's `worker`
role in child processes of its own (GATEWAY_SERVE_WORKER_PROCESSES, two by default),
on the same database, and stays one command: the children are started, woken, restarted and
stopped by the parent.

- **Ready.** A child sends one byte, `r`, once its roles run (the processor's parser process
  started, its lookup tables loaded): `gateway serve` says it is ready after its children are.
  A child imports the whole gateway and the parsers (a second or two of CPU each, two at once
  on a two-core machine), which otherwise ran beside the first minutes' mail.
- **Waking.** The parent holds one end of a socket pair per child and sends one byte per
  reason: `p` when mail was stored (the acceptor's `on_stored`), `o` when a reply was queued.
  A lost byte costs at most the worker's poll interval, never mail: the worker also polls.
- **Stopping.** Closing the pair stops the child: the parent closes it on shutdown, and the
  kernel closes it when the parent dies, even by `kill -9`, so no worker outlives its server.
  Ctrl-C reaches the whole process group; the child ignores SIGINT and waits for its parent.
  A child that doesn't finish in time is asked for its threads' stacks (faulthandler), then
  terminated.
- **Restarting.** A child that dies on its own is started again after a pause that doubles up
  to a minute. Claims are row locks and leases in the database (gateway/inbound/processor.py,
  gateway/outbound/outbox.py), so the new child takes over what the old one left; the mail a
  dead child had claimed is put back at once (`on_death`), not after the five-minute lease.
  Outbound jobs keep their lease: the child may have handed the mail to the relay already.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Awaitable, Callable

from gateway.settings import Settings

log = logging.getLogger(__name__)
WAKE_PROCESSOR = b"p"
WAKE_OUTBOX = b"o"
READY = b"r"                  # the child's one message to its parent: its roles run
DUMP_THREADS = signal.SIGUSR1  # the child writes every thread's stack to stderr (faulthandler)
WAKE_SPACING = 0.02           # seconds: the shortest gap between two processor wake-ups sent
STOP_TIMEOUT = 30.0           # seconds the child gets to finish a batch and a send on shutdown
RESTART_PAUSE = (1.0, 60.0)   # first and longest pause before a died child is started again
START_TIMEOUT = 120.0         # seconds a child may take to say it is ready (imports on a loaded machine)

ChildMain = Callable[[Settings, socket.socket], None]
OnDeath = Callable[[int], Awaitable[None]]   # a child died without being asked to: its pid


class WorkerProcess:
    """The parent's handle on the worker child: start, wake, watch, stop."""

    def __init__(self, main: ChildMain, settings: Settings, on_death: OnDeath | None = None) -> None:
        self._main = main
        self._settings = settings
        self._on_death = on_death
        self._context = multiprocessing.get_context("spawn")  # no inherited threads, loops or engines
        self._process: multiprocessing.process.BaseProcess | None = None
        self._channel: socket.socket | None = None
        self._stopping = False
        self._exited: asyncio.Future[int | None] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child; call on the running event loop, which learns of its exit."""
        parent_end, child_end = socket.socketpair()
        parent_end.setblocking(False)
        process = self._context.Process(target=self._main, args=(self._settings, child_end),
                                        name="gateway-worker", daemon=False)
        process.start()
        child_end.close()
        self._process, self._channel = process, parent_end
        # One place reaps the child: its sentinel becomes readable when it exits. Two threads
        # joining one process race in waitpid(), and the loser reads a dead child as alive.
        loop = asyncio.get_running_loop()
        self._exited = exited = loop.create_future()
        loop.add_reader(process.sentinel, self._reap, loop, process, exited)
        log.info("worker process %s started", process.pid)

    @staticmethod
    def _reap(loop: asyncio.AbstractEventLoop, process: multiprocessing.process.BaseProcess,
              exited: asyncio.Future[int | None]) -> None:
        loop.remove_reader(process.sentinel)
        process.join()          # returns at once: the child has exited
        if not exited.done():
            exited.set_result(process.exitcode)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Until the child has said it is ready (True), or died or took longer than `timeout`."""
        channel = self._channel
        if channel is None:
            return False
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            said = await asyncio.wait_for(loop.sock_recv(channel, 1), timeout)
        except (asyncio.TimeoutError, OSError):
            said = b""
        if said != READY:
            log.warning("worker process %s did not say it was ready within %.0f s", self.pid, timeout)
            return False
        log.info("worker process %s ready after %.1f s", self.pid, loop.time() - started)
        return True

    def wake_processor(self) -> None:
        self._send(WAKE_PROCESSOR)

    def wake_outbox(self) -> None:
        self._send(WAKE_OUTBOX)

    def _send(self, reason: bytes) -> None:
        channel = self._channel
        if channel is None:
            return
        # A full pair means the child has wake-ups it hasn't read yet; a broken one, that it died
        # (watch() starts another, which looks for work on its own). Neither may fail the caller,
        # which is storing mail.
        with contextlib.suppress(BlockingIOError, ConnectionError, OSError):
            channel.send(reason)

    async def watch(self) -> None:
        """Start the child again whenever it dies on its own, until stop()."""
        pause = RESTART_PAUSE[0]
        while not self._stopping:
            process, exited = self._process, self._exited
            if process is None or exited is None:
                return
            await asyncio.shield(exited)
            if self._stopping:
                return
            log.error("worker process %s exited with code %s; starting another in %.0f s",
                      process.pid, process.exitcode, pause)
            self._close_channel()
            await self._died(process)
            await asyncio.sleep(pause)
            if self._stopping:
                return
            pause = min(pause * 2, RESTART_PAUSE[1])
            self.restarts += 1
            self.start()
            await self.wait_ready()

    async def stop(self) -> None:
        """Close the pair (the child's signal to finish), wait for it, and make sure it is gone."""
        self._stopping = True
        self._close_channel()
        process, exited = self._process, self._exited
        if process is None or exited is None:
            return
        if await self._waited(exited, STOP_TIMEOUT):
            return
        log.warning("worker process %s did not stop in %.0f s; its threads follow, then it is terminated",
                    process.pid, STOP_TIMEOUT)
        with contextlib.suppress(OSError):      # the child's faulthandler prints where it hangs
            os.kill(process.pid, DUMP_THREADS)  # type: ignore[arg-type]
        if await self._waited(exited, 1):
            return
        process.terminate()
        if not await self._waited(exited, 5):
            process.kill()
            await self._waited(exited, 5)
        await self._died(process)

    async def _died(self, process: multiprocessing.process.BaseProcess) -> None:
        """Tell `on_death` (which frees the child's claims); its failure must not stop the watch."""
        if self._on_death is None or process.pid is None:
            return
        try:
            await self._on_death(process.pid)
        except Exception:
            log.exception("cleaning up after worker process %s failed; its claims return after their lease",
                          process.pid)

    @staticmethod
    async def _waited(exited: asyncio.Future[int | None], timeout: float) -> bool:
        done, _ = await asyncio.wait({exited}, timeout=timeout)
        return bool(done)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class WorkerGroup:
    """`gateway serve`'s worker children: the same role in each, started, woken and stopped together.

    More than one, because a burst of mail is threaded at the pace of one core per process:
    parsing is most of the work and needs no lock, so while one child writes its chunk the
    others parse theirs (claims are row locks, so each message is taken by one child). Stored
    mail wakes them all, and each claims what is left; a queued reply wakes one, in turn, since
    one send is one child's work. Periodic rounds guard themselves (the backup lock, idempotent
    purges), as they do for the Procfile's scaled workers.
    """

    def __init__(self, main: ChildMain, settings: Settings, count: int, on_death: OnDeath | None = None) -> None:
        self.children = [WorkerProcess(main, settings, on_death) for _ in range(count)]
        self._turn = 0
        self._last_wake = float("-inf")
        self._trailing: asyncio.TimerHandle | None = None

    @property
    def pids(self) -> list[int]:
        return [pid for child in self.children if (pid := child.pid) is not None]

    def start(self) -> None:
        for child in self.children:
            child.start()

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Until every child has said it is ready; False if one died or took too long."""
        return all(await asyncio.gather(*(child.wait_ready(timeout) for child in self.children)))

    def wake_processor(self) -> None:
        """Wake every child, at most once per WAKE_SPACING; a call within it wakes them at its end.

        While mail streams in, the acceptor stores a batch every millisecond or two, and a
        wake-up per batch and child cost the SMTP process a tenth of its time in send() calls
        and context switches, for children that hold back anyway until the stream pauses
        (processor.should_defer). The trailing wake-up keeps the promise that the last mail
        of a stream is looked at within WAKE_SPACING."""
        if self._trailing is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_wake + WAKE_SPACING - loop.time()
        if wait > 0:
            self._trailing = loop.call_later(wait, self._wake_children)
        else:
            self._wake_children()

    def _wake_children(self) -> None:
        self._trailing = None
        self._last_wake = asyncio.get_running_loop().time()
        for child in self.children:
            child.wake_processor()

    def wake_outbox(self) -> None:
        self._turn = (self._turn + 1) % len(self.children)
        self.children[self._turn].wake_outbox()

    async def watch(self) -> None:
        await asyncio.gather(*(child.watch() for child in self.children))

    async def stop(self) -> None:
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None
        await asyncio.gather(*(child.stop() for child in self.children))


def say_ready(channel: socket.socket) -> None:
    """The child's side of `wait_ready`: its roles run."""
    with contextlib.suppress(OSError):   # the parent is gone: listen() sees the closed pair
        channel.sendall(READY)


def listen(channel: socket.socket, *, processor: Callable[[], None], outbox: Callable[[], None],
           closed: Callable[[], None]) -> None:
    """The child's side: call `processor`/`outbox` per wake-up byte, `closed` when the parent is gone.

    Runs on the child's event loop (a reader callback), so the callbacks may touch the loop's
    objects (the outbox's asyncio.Event) directly.
    """
    loop = asyncio.get_running_loop()
    channel.setblocking(False)

    def readable() -> None:
        try:
            data = channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(channel)
            closed()
            return
        if WAKE_PROCESSOR in data:
            processor()
        if WAKE_OUTBOX in data:
            outbox()

    loop.add_reader(channel, readable)
