"""The worker's metric hook counts each handled job once, in the right family, with bounded labels."""

from __future__ import annotations

from prometheus_client import REGISTRY

from billing import metrics
from billing.domain.sending import Handled
from billing.worker.handler import Result


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_record_job_counts_sends_deferrals_and_dead_letters_with_bounded_labels() -> None:
    before = {
        "sent": sample("billing_sends_total", outcome="sent", code="sent"),
        "timed_out": sample("billing_sends_total", outcome="retry_scheduled", code="timed_out"),
        "other": sample("billing_sends_total", outcome="failed", code="other"),
        "throttled": sample("billing_jobs_deferred_total", reason="throttled"),
        "poison": sample("billing_jobs_dead_lettered_total", reason="unknown_contact"),
        "final": sample("billing_jobs_handled_total", outcome="already_final"),
    }
    metrics.record_job(Result(Handled.SENT, code="sent", attempt=1))
    metrics.record_job(Result(Handled.RETRY_SCHEDULED, code="timed_out", attempt=1))
    metrics.record_job(Result(Handled.FAILED, code="Gateway said +5511987654321!", attempt=2))
    metrics.record_job(Result(Handled.THROTTLED, not_before="2025-01-20T12:00:00+00:00"))
    metrics.record_job(Result(Handled.POISON, reason="unknown_contact"))
    metrics.record_job(Result(Handled.ALREADY_FINAL, status="sent"))
    assert sample("billing_sends_total", outcome="sent", code="sent") == before["sent"] + 1
    assert (
        sample("billing_sends_total", outcome="retry_scheduled", code="timed_out") == before["timed_out"] + 1
    )
    assert (
        sample("billing_sends_total", outcome="failed", code="other") == before["other"] + 1
    )  # never raw text
    assert sample("billing_jobs_deferred_total", reason="throttled") == before["throttled"] + 1
    assert sample("billing_jobs_dead_lettered_total", reason="unknown_contact") == before["poison"] + 1
    assert sample("billing_jobs_handled_total", outcome="already_final") == before["final"] + 1
    labels = {
        value
        for family in REGISTRY.collect()
        if family.name.startswith("billing_")
        for s in family.samples
        for value in s.labels.values()
    }
    assert not any("5511987654321" in v for v in labels)
