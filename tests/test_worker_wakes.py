"""The parent wakes its worker children over socket pairs: a burst of stored batches must cost a
few wake-ups, not one per batch and child, and the last batch of a burst must still wake them."""
from __future__ import annotations

import asyncio
import socket

from gateway.settings import Settings
from gateway.worker_process import WAKE_PROCESSOR, WAKE_SPACING, WorkerGroup


def _unused_main(settings: Settings, channel: socket.socket) -> None:  # pragma: no cover - never started
    raise AssertionError("no child is started here")


def test_a_burst_wakes_each_child_once_at_once_and_once_at_its_end() -> None:
    group = WorkerGroup(_unused_main, Settings(), 2)
    ends = []
    for child in group.children:       # the pairs start() would make, without the processes
        parent_end, child_end = socket.socketpair()
        parent_end.setblocking(False)
        child._channel = parent_end
        child_end.settimeout(5 * WAKE_SPACING + 5)
        ends.append(child_end)

    async def burst() -> list[bytes]:
        for _ in range(200):            # a stream of group commits, far closer than WAKE_SPACING
            group.wake_processor()
        first = [end.recv(64) for end in ends]
        loop = asyncio.get_running_loop()   # the trailing wake-up is a timer on it: recv off the loop
        trailing = await asyncio.gather(*(loop.run_in_executor(None, end.recv, 64) for end in ends))
        return first + list(trailing)

    received = asyncio.run(burst())
    assert received == [WAKE_PROCESSOR] * 4
    for end in ends:
        end.setblocking(False)
        try:
            extra = end.recv(64)
        except BlockingIOError:
            extra = b""
        assert extra == b""             # nothing more than the first and the trailing one
        end.close()
    for child in group.children:
        child._close_channel()
