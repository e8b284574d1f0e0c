"""A Server-Sent Events reader for tests: a real streaming HTTP request (httpx) in a thread.

Each event (the fields of one blank-line-terminated block with a `data:` line) goes into a
queue; comment lines (heartbeats) are counted; `ended` is set when the server closes the stream.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import httpx


class EventReader:
    def __init__(self, base_url: str, token: str | None, *, last_event_id: str | None = None,
                 query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.opened, self.ended = threading.Event(), threading.Event()
        self.status = 0
        self.heartbeats = 0
        self._response: httpx.Response | None = None
        self._client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=60))
        sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}  # None: a cookie
        if last_event_id is not None:
            sent["Last-Event-ID"] = last_event_id
        self._thread = threading.Thread(target=self._run, args=(sent, query or {}), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the stream did not open"

    def _run(self, headers: dict[str, str], query: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", "/api/v1/events", headers=headers, params=query) as response:
                self._response = response
                self.status = response.status_code
                self.opened.set()
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if "data" in fields:
                            self.events.put({"id": fields.get("id"), "event": fields.get("event"),
                                             "data": json.loads(fields["data"])})
                        fields = {}
                    elif line.startswith(":"):
                        self.heartbeats += 1
                    else:
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by close(), or the server went away
        finally:
            self._client.close()
            self.opened.set()
            self.ended.set()

    def next(self, timeout: float = 10) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def until(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.next(max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def nothing_more(self) -> bool:
        return self.events.empty()

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=10)
