"""Prometheus text-format metrics without the ``prometheus_client`` dependency.

Three families are enough to run the service: request counts by endpoint and status, request
latency histograms and model batch sizes (the micro-batcher's whole point is visible there).
Labels hold route templates and status codes only, never anything from a request body.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("medvl.serve")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}" if pairs else ""


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class Histogram:
    """Cumulative-bucket histogram keyed by a label tuple (thread-safe)."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str], buckets: Sequence[float]):
        self.name, self.help, self.label_names, self.buckets = name, help_text, tuple(label_names), tuple(buckets)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sum: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts = self._counts.setdefault(labels, [0] * (len(self.buckets) + 1))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
            counts[-1] += 1
            self._sum[labels] += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for labels, counts in sorted(self._counts.items()):
                base = list(zip(self.label_names, labels, strict=True))
                for b, c in zip(self.buckets, counts, strict=False):
                    out.append(f"{self.name}_bucket{_labels([*base, ('le', _num(b))])} {c}")
                out.append(f"{self.name}_bucket{_labels([*base, ('le', '+Inf')])} {counts[-1]}")
                out.append(f"{self.name}_sum{_labels(base)} {self._sum[labels]!r}")
                out.append(f"{self.name}_count{_labels(base)} {counts[-1]}")
        return out


class Counter:
    """Monotonic counter keyed by a label tuple (thread-safe)."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._values: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] += amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for labels, v in sorted(self._values.items()):
                out.append(f"{self.name}{_labels(list(zip(self.label_names, labels, strict=True)))} {_num(v)}")
        return out


class Metrics:
    """The service's metric families; one instance per app so tests see only their own traffic."""

    def __init__(self) -> None:
        self.requests = Counter("medvl_requests_total", "HTTP requests by route, method and status.",
                                ("route", "method", "status"))
        self.latency = Histogram("medvl_request_duration_seconds", "HTTP request latency by route.",
                                 ("route",), LATENCY_BUCKETS)
        self.batch_size = Histogram("medvl_batch_size", "Items per model/index forward pass.", ("stage",),
                                    BATCH_BUCKETS)
        self.started = time.time()

    def render(self) -> str:
        lines = [*self.requests.render(), *self.latency.render(), *self.batch_size.render(),
                 "# HELP medvl_uptime_seconds Seconds since the app was created.",
                 "# TYPE medvl_uptime_seconds gauge", f"medvl_uptime_seconds {time.time() - self.started:.3f}"]
        return "\n".join(lines) + "\n"


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class MetricsMiddleware:
    """Count and time every HTTP request, including the 401/413 answered by inner middleware.

    The route label is the matched route template when known and ``other`` otherwise, so a
    scanner requesting random paths cannot blow up the number of time series.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: Callable[[], set[str]]):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            route = path if path in self.known_paths() else ("/static" if path.startswith("/static/") else "other")
            elapsed = time.perf_counter() - start
            self.metrics.requests.inc(route, scope.get("method", ""), str(status["code"]))
            self.metrics.latency.observe(elapsed, route)
            # Route template and status only: never the query string, body or client address.
            log.debug("%s %s -> %d in %.1f ms", scope.get("method", ""), route, status["code"], elapsed * 1000)
