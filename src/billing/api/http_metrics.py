"""The API's HTTP metrics: litestar's Prometheus plugin (requests, durations and in-progress by method,
route template and status) with :class:`HttpMetricsMiddleware` as its middleware, and ``GET /metrics``."""

from __future__ import annotations

import time
from typing import Any

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send


class HttpMetricsMiddleware(PrometheusMiddleware):
    """litestar's Prometheus middleware — the same metrics, names, labels and values — that keeps each
    labelled series it records into (``labels()``'s child, which prometheus-client's documentation lets a
    caller keep): the library's ``__call__`` builds a ``Request``, three label dicts and a
    ``functools.wraps`` of ``send``, and looks the series up (a lock and a validation each) four times
    per request, ~7 % of a status poll's CPU (``bench/status.py``). A configuration with extra labels,
    exemplars or excluded methods takes the library's own path."""

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._own_path = not (config.labels or config.exemplars or config.excluded_http_methods)
        self._in_progress: dict[tuple[str, str], Any] = {}
        self._finished: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        return {"method": method, "path": path, "status_code": status, "app_name": self._config.app_name}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._own_path:
            await super().__call__(scope, receive, send)
            return
        info: Any = scope  # an HTTP or WebSocket scope, read as the library reads it
        method = info["method"] if info["type"] == "http" else info["type"]
        path = info["path_template"] if self._config.group_path else info["path"]
        gauge = self._in_progress.get((method, path))
        if gauge is None:
            labels = self._labels(method, path, 200)  # the library labels in-progress requests 200
            gauge = self._in_progress[method, path] = self.requests_in_progress(labels).labels(
                *labels.values()
            )
        started = time.perf_counter()
        span = [200, 0.0]  # status, duration (s) at the last body message

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                span[0] = message["status"]
            elif message["type"] == "http.response.body":
                span[1] = time.perf_counter() - started
            await send(message)

        gauge.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            gauge.dec()
            status = int(span[0])
            series = self._finished.get((method, path, status))
            if series is None:
                labels = self._labels(method, path, status)
                values = [*labels.values()]
                errors = self.requests_error_count(labels).labels(*values) if status >= 500 else None
                series = (
                    self.request_count(labels).labels(*values),
                    self.request_time(labels).labels(*values),
                    errors,
                )
                self._finished[method, path, status] = series
            series[0].inc()
            series[1].observe(span[1])
            if series[2] is not None:
                series[2].inc()


PROMETHEUS = PrometheusConfig(
    app_name="billing",
    prefix="billing_http",
    group_path=True,
    exclude_unhandled_paths=True,
    exclude="^/metrics",
    middleware_class=HttpMetricsMiddleware,
)
"""HTTP metrics of litestar's Prometheus plugin: requests, durations and in-progress by method, route
template (``group_path``: bounded, no ids) and status; unmatched paths are not counted (see
:mod:`billing.metrics`)."""


class MetricsController(PrometheusController):
    """``GET /metrics``: this process's Prometheus metrics (text format)."""

    path = "/metrics"
    include_in_schema = False
