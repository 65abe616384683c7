"""The API's HTTP metrics middleware (``billing.webapp.HttpMetricsMiddleware``) records what litestar's own
Prometheus middleware records: the same series, counts and histogram counts for the same requests."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, get
from litestar.exceptions import HTTPException
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from billing.webapp import PROMETHEUS, HttpMetricsMiddleware


@get("/things/{thing_id:str}", sync_to_thread=False)
def thing(thing_id: str) -> dict[str, str]:
    if thing_id == "broken":
        raise HTTPException(status_code=503, detail="down")
    return {"id": thing_id}


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
    before = samples(prefix)
    app = Litestar([thing], middleware=[config.middleware])
    with TestClient(app) as client:
        for path, status in REQUESTS:
            assert client.get(path).status_code == status
    after = samples(prefix)
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0)}


def test_the_api_records_the_same_series_as_litestars_middleware() -> None:
    options = {
        "app_name": PROMETHEUS.app_name,
        "group_path": True,
        "exclude_unhandled_paths": PROMETHEUS.exclude_unhandled_paths,
    }
    prefix = "billing_test_http"
    ours = delta(PrometheusConfig(prefix=prefix, middleware_class=HttpMetricsMiddleware, **options), prefix)
    theirs = delta(PrometheusConfig(prefix=prefix, middleware_class=PrometheusMiddleware, **options), prefix)
    assert ours == theirs
    route = (("app_name", "billing"), ("method", "GET"), ("path", "/things/{thing_id}"))

    def series(status: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*route, ("status_code", status))))

    assert ours[f"{prefix}_requests_total", series("200")] == 2
    assert ours[f"{prefix}_requests_total", series("503")] == 1
    assert ours[f"{prefix}_requests_error_total", series("503")] == 1
    assert ours[f"{prefix}_request_duration_seconds_count", series("200")] == 2
    assert not any("/nowhere" in str(labels) for _, labels in ours)  # unmatched paths are not counted
