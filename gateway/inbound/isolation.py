"""Parsing under a time budget: in a child process that is killed when a message overruns it.

Parsing is where a stranger's bytes meet our code and three libraries (flanker, the stdlib's
email package, nh3's html5ever), and where an input that costs the square of its size stalls
everything behind it: one HTML mail of a few hundred KB held the single processor for hours.
Fixing each slow path (gateway/inbound/mime/html_text.py) is necessary, not sufficient, so
each message also gets GATEWAY_PROCESS_TIME_BUDGET seconds. Python cannot stop a thread, so
the parse runs in a child process; a message over its budget is reported as `OVERRUN` (the
processor quarantines it with "processing took too long"), the child is killed and a fresh
one takes the rest of the batch. Other mail is held up by at most one budget.

The normal case stays cheap: one long-lived child per processor thread, a batch goes over in
one send, and results stream back one per message, so a message costs a pickle each way and
no round trip of its own. A child that dies (killed by the kernel for memory, or crashed in C)
gives `DIED` for the message it was on: a failed attempt, counted by the three-attempts rule.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection

from gateway.inbound.mime import ParsedMessage, parse

log = logging.getLogger(__name__)

TOO_LONG = "processing took too long"
CHILD_DIED = "the parser process died"
READY = "ready"
STARTUP_TIMEOUT = 120.0   # seconds a new child may take to import the parsers (a loaded machine)
BATCH_BYTES = 8 * 1024 * 1024  # raw bytes sent to the child in one go (pickled whole, so bounded)


@dataclass(frozen=True)
class Overran:
    """The message took longer than the budget; its parser was killed."""
    budget: float


@dataclass(frozen=True)
class Died:
    """The parser process ended while on this message (not a timeout)."""
    exitcode: int | None


Outcome = ParsedMessage | Overran | Died


# Children are forked from a forkserver: a small single-threaded process, started once per
# parent and holding the parsers already imported, so a child inherits no threads, loops or
# engines (as with "spawn") yet starts in milliseconds instead of re-importing flanker for
# about a second each time (a new child after every kill, one per processor thread).
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.inbound.isolation"])


def _child_main(channel: Connection) -> None:
    """The child: parse each message of each batch it is sent, until the pipe closes."""
    # Ctrl-C reaches the whole process group; the processor that owns this child decides when
    # it ends (closing the pipe), as gateway serve does for its worker children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel.send(READY)
    while True:
        try:
            batch = channel.recv()
        except (EOFError, OSError):
            return  # the processor closed the pipe or died: nothing left to do
        for raw in batch:
            channel.send(parse(raw))  # parse() never raises (gateway/inbound/mime/parser.py)


class ParseChild:
    """One parser child process and its pipe; started on demand, replaced after a kill."""

    def __init__(self) -> None:
        self._context = _CONTEXT
        self._process: multiprocessing.process.BaseProcess | None = None
        self._channel: Connection | None = None
        self.started = 0

    def start(self) -> None:
        """Start a child if none runs, and wait until it has imported the parsers."""
        if self._process is not None:
            return
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_child_main, args=(theirs,), name="gateway-parser", daemon=True)
        process.start()
        theirs.close()
        self._process, self._channel = process, ours
        self.started += 1
        # The import time of a new child is not any message's: the budget starts after this.
        if not ours.poll(STARTUP_TIMEOUT) or self._recv_ready() != READY:
            self.stop()
            raise RuntimeError(f"the parser process did not start within {STARTUP_TIMEOUT:.0f} s")

    def _recv_ready(self) -> object:
        assert self._channel is not None
        try:
            return self._channel.recv()
        except (EOFError, OSError):
            return None

    def stop(self) -> None:
        """Kill the child (a parse cannot be interrupted any other way) and forget it."""
        process, channel = self._process, self._channel
        self._process = self._channel = None
        if channel is not None:
            channel.close()
        if process is not None:
            process.kill()
            process.join(5)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def parse_all(self, raws: list[bytes], budget: float) -> list[Outcome]:
        """Parse every message, each within `budget` seconds; one outcome per message, in order."""
        return list(self.parse_stream(raws, budget))

    def parse_stream(self, raws: list[bytes], budget: float) -> Iterator[Outcome]:
        """Each message's outcome as soon as it is known, in order, each parse within `budget`
        seconds of the caller asking for it.

        The child goes on parsing while the caller works on what it has (the processor threads a
        chunk while the next is parsed: two cores for one message stream). A caller that stops
        early leaves answers in the pipe, so the child is killed then, and the next call starts
        a clean one.
        """
        done = 0
        try:
            for outcome in self._stream(raws, budget):
                done += 1
                yield outcome
        finally:
            if done < len(raws):
                self.stop()

    def _stream(self, raws: list[bytes], budget: float) -> Iterator[Outcome]:
        outcomes: list[Outcome] = []
        lost = 0
        while len(outcomes) < len(raws):
            batch = _first_bytes(raws[len(outcomes):], BATCH_BYTES)
            self.start()
            assert self._channel is not None and self._process is not None
            try:
                self._channel.send(batch)
            except OSError:  # the child died idle: a new one takes the batch, but not forever
                self.stop()
                lost += 1
                if lost >= 3:
                    raise RuntimeError("parser processes die before taking any work") from None
                continue
            for raw in batch:
                if not self._channel.poll(budget):
                    log.warning("parser %s overran its %.0f s budget on a message of %d bytes; replaced",
                                self._process.pid, budget, len(raw))
                    self.stop()
                    outcomes.append(Overran(budget))
                    yield outcomes[-1]
                    break
                try:
                    outcomes.append(self._channel.recv())
                except (EOFError, OSError):
                    process = self._process
                    self.stop()
                    outcomes.append(Died(process.exitcode))
                    log.warning("parser %s died (exit code %s) on a message of %d bytes; replaced",
                                process.pid, process.exitcode, len(raw))
                    yield outcomes[-1]
                    break
                yield outcomes[-1]


def _first_bytes(raws: list[bytes], limit: int) -> list[bytes]:
    """The longest prefix of `raws` within `limit` bytes, and at least one message."""
    total = 0
    for count, raw in enumerate(raws):
        total += len(raw)
        if total > limit and count:
            return raws[:count]
    return raws


_local = threading.local()


def child_for_thread() -> ParseChild:
    """This thread's parser child: each processor thread waits on its own."""
    child = getattr(_local, "child", None)
    if child is None:
        child = _local.child = ParseChild()
    return child


def parse_within(raws: list[bytes], budget: float) -> Iterator[Outcome]:
    """Each message parsed within `budget` seconds (0: in this process, without a budget), as
    a stream of outcomes in order (see ParseChild.parse_stream)."""
    if budget <= 0:
        return (parse(raw) for raw in raws)
    return child_for_thread().parse_stream(raws, budget)
