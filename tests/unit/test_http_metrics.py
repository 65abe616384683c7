"""The API's HTTP metrics middleware (``billing.api.http_metrics.HttpMetricsMiddleware``) records what
litestar's own Prometheus middleware records: the same series, counts and histogram counts for the same
requests, a request counted in progress while it runs, and real durations."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, get
from litestar.exceptions import HTTPException
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from billing.api.http_metrics import PROMETHEUS, HttpMetricsMiddleware

PREFIX = "billing_test_http"
ROUTE = {"app_name": "billing", "method": "GET", "path": "/things/{thing_id}"}


@get("/things/{thing_id:str}", sync_to_thread=False)
def thing(thing_id: str) -> dict[str, Any]:
    if thing_id == "broken":
        raise HTTPException(status_code=503, detail="down")
    # this request, as the in-progress gauge counts it while it runs
    in_progress = REGISTRY.get_sample_value(f"{PREFIX}_requests_in_progress", {**ROUTE, "status_code": "200"})
    return {"id": thing_id, "in_progress": in_progress}


REQUESTS = [("/things/a", 200), ("/things/b", 200), ("/things/broken", 503), ("/nowhere", 404)]


def samples(prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics named ``prefix…`` but the durations' sums and buckets."""
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name.startswith(prefix) and not sample.name.endswith(("_sum", "_bucket", "_created")):
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def delta(config: PrometheusConfig, prefix: str) -> dict[Any, float]:
    """What the four requests add to each sample, and the request duration sum added for status 200."""
    duration = f"{prefix}_request_duration_seconds_sum"
    labels = {**ROUTE, "status_code": "200"}
    before, before_sum = samples(prefix), REGISTRY.get_sample_value(duration, labels) or 0.0
    app = Litestar([thing], middleware=[config.middleware])
    with TestClient(app) as client:
        for path, status in REQUESTS:
            response = client.get(path)
            assert response.status_code == status
            if status == 200:
                assert response.json()["in_progress"] == 1.0  # counted while it runs
    after = samples(prefix)
    added = {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0)}
    added[duration, ()] = (REGISTRY.get_sample_value(duration, labels) or 0.0) - before_sum
    return added


def test_the_api_records_the_same_series_as_litestars_middleware() -> None:
    options = {
        "app_name": PROMETHEUS.app_name,
        "group_path": True,
        "exclude_unhandled_paths": PROMETHEUS.exclude_unhandled_paths,
    }
    prefix = PREFIX
    ours = delta(PrometheusConfig(prefix=prefix, middleware_class=HttpMetricsMiddleware, **options), prefix)
    theirs = delta(PrometheusConfig(prefix=prefix, middleware_class=PrometheusMiddleware, **options), prefix)
    summed = (f"{prefix}_request_duration_seconds_sum", ())
    durations = (ours.pop(summed), theirs.pop(summed))
    assert ours == theirs
    assert all(0 < seconds < 5 for seconds in durations)  # two requests' real durations, both ways
    route = (("app_name", "billing"), ("method", "GET"), ("path", "/things/{thing_id}"))

    def series(status: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*route, ("status_code", status))))

    assert ours[f"{prefix}_requests_total", series("200")] == 2
    assert ours[f"{prefix}_requests_total", series("503")] == 1
    assert ours[f"{prefix}_requests_error_total", series("503")] == 1
    assert ours[f"{prefix}_request_duration_seconds_count", series("200")] == 2
    assert not any("/nowhere" in str(labels) for _, labels in ours)  # unmatched paths are not counted
