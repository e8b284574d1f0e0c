"""The worker's periodic rounds (purge, lockdown reconciliation): one at start, then one every
interval until stop(), each in a thread so the event loop never waits on the database or Stripe.

A failed round is logged and the next one tries again: every round's work is written to be
repeatable (the purge logs before it erases, lockdowns record intent before asking Stripe).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class PeriodicRound:
    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval      # seconds between the end of one round and the next
        self.work = work
        self._stop = asyncio.Event()
        self._rounds = 0
        self._done = threading.Condition()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.work)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("%s round failed; retrying in %.0f s", self.name, self.interval)
            with self._done:
                self._rounds += 1
                self._done.notify_all()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        """Called on the loop's thread; a round in progress finishes first."""
        self._stop.set()

    def wait_rounds(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least `count` rounds have run (tests, from another thread)."""
        with self._done:
            return self._done.wait_for(lambda: self._rounds >= count, timeout=timeout)
