"""smtp_ingest's --profile, inside the gateway process: where one window of wall time went.

Three views of the same window: CPU per thread (from /proc), wall time in wrapped gateway
functions (wrapped here only; nothing in gateway/ changes) with the group-commit batch sizes,
and wall-clock stack samples of every thread.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.lib.procs import proc_cpu

_ROOT = str(Path(__file__).resolve().parents[2]) + "/"


def _thread_kind(name: str) -> str:
    return re.sub(r"[-_]\d+$", "", name)  # acceptor_0 -> acceptor


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds per live thread of this process, by native id, with the Python thread name."""
    return {t.native_id: (t.name, proc_cpu("self", t.native_id))
            for t in threading.enumerate() if t.native_id is not None}


def cpu_report(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
               process: float, window: float) -> str:
    per: Counter = Counter()
    for tid, (name, cpu) in after.items():
        per[_thread_kind(name)] += cpu - before.get(tid, (name, 0.0))[1]
    lines = [f"  CPU over the window ({window:.2f} s wall): whole process {process:.2f} s = "
             f"{100 * process / window:.0f}% of one core"]
    for name, cpu in per.most_common():
        if cpu > 0.005:
            lines.append(f"    {name:<28} {cpu:7.2f} s  {100 * cpu / window:5.1f}% of one core")
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", _ROOT, "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


class StackSampler(threading.Thread):
    """Wall-clock sampling of every thread's Python stack (py-spy is not available here).

    A leaf is the innermost Python frame, so time inside C (sqlite3 step, fsync, libpq,
    uvloop's select) is charged to the Python line that called it.
    """

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples: Counter = Counter()
        self.leaf: dict[str, Counter] = defaultdict(Counter)
        self.inclusive: dict[str, Counter] = defaultdict(Counter)
        self.tids: dict[str, set[int]] = defaultdict(set)

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stop_event.is_set():
            names = {t.ident: t.name for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                thread = _thread_kind(names.get(tid, str(tid)))
                self.samples[thread] += 1
                self.tids[thread].add(tid)
                seen = set()
                leaf = True
                f = frame
                while f is not None:
                    code = f.f_code
                    key = f"{_short(code.co_filename)}:{code.co_name}"
                    if leaf:
                        self.leaf[thread][f"{key}:{f.f_lineno}"] += 1
                        leaf = False
                    if key not in seen:
                        seen.add(key)
                        self.inclusive[thread][key] += 1
                    f = f.f_back
            time.sleep(self.interval)

    def report(self, top: int = 14) -> str:
        out = []
        for thread, total in self.samples.most_common():
            threads = len(self.tids[thread])
            label = f"{thread} ({threads} threads, % averaged over them)" if threads > 1 else thread
            out.append(f"  thread {label}: {total // threads} samples per thread")
            out.append("    self (innermost Python frame):")
            for key, n in self.leaf[thread].most_common(top):
                out.append(f"      {100 * n / total:5.1f}%  {key}")
            if not any(m in k for k in self.inclusive[thread] for m in ("gateway/", "aiosmtpd/")):
                continue
            out.append("    inclusive (gateway and database frames):")
            shown = 0
            for key, n in self.inclusive[thread].most_common():
                if not any(k in key for k in ("gateway/", "sqlalchemy/", "psycopg/", "aiosmtpd/", "sqlite3")):
                    continue
                out.append(f"      {100 * n / total:5.1f}%  {key}")
                shown += 1
                if shown >= top:
                    break
        return "\n".join(out)


class Timings:
    """perf_counter totals for wrapped gateway functions (installed by the benchmark only)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: Counter = Counter()
        self.calls: Counter = Counter()
        self.batch_sizes: list[int] = []

    def wrap(self, owner: Any, name: str, label: str, batch_arg: int | None = None) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                with self.lock:
                    self.total[label] += elapsed
                    self.calls[label] += 1
                    if batch_arg is not None:
                        self.batch_sizes.append(len(args[batch_arg]))

        setattr(owner, name, wrapper)

    def clear(self) -> None:
        with self.lock:
            self.total.clear()
            self.calls.clear()
            self.batch_sizes.clear()

    def report(self, window: float) -> str:
        out = [f"  wall window {window:.2f} s; per wrapped function: calls, total s, mean ms, share of window"]
        for label, total in sorted(self.total.items(), key=lambda kv: -kv[1]):
            calls = self.calls[label]
            out.append(f"    {label:<44} {calls:>7}  {total:8.3f}  {1000 * total / calls:8.3f}  {100 * total / window:5.1f}%")
        if self.batch_sizes:
            sizes = sorted(self.batch_sizes)
            out.append(f"  group-commit batches: {len(sizes)}, mean size {sum(sizes) / len(sizes):.1f}, "
                       f"p50 {sizes[len(sizes) // 2]}, max {sizes[-1]}")
        return "\n".join(out)


class Window:
    """The three views over one window, from `start` to `stop` (which returns the report)."""

    def __init__(self, functions: list[tuple[Any, str, str, int | None]]) -> None:
        self.timings = Timings()
        for owner, name, label, batch_arg in functions:
            self.timings.wrap(owner, name, label, batch_arg)
        self.sampler: StackSampler | None = None

    def start(self) -> None:
        self.timings.clear()
        self.cpu_before, self.process_before = thread_cpu(), proc_cpu("self")
        self.sampler = StackSampler()
        self.sampler.start()
        self.started = time.perf_counter()

    def stop(self) -> str:
        if self.sampler is None:
            return ""
        self.sampler.stop_event.set()
        self.sampler.join()
        window = time.perf_counter() - self.started
        text = (cpu_report(self.cpu_before, thread_cpu(), proc_cpu("self") - self.process_before, window) + "\n"
                + self.timings.report(window) + "\n  stack samples (biased towards GIL releases):\n"
                + self.sampler.report())
        self.sampler = None
        return text
