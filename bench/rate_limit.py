"""Figure: the per-API-key rate limit across two real ``billing api`` processes.

Sends N status polls at concurrency C, alternating between two ``api`` processes, with one API key, and
prints how many were admitted and refused (429) — with the shared Redis store (``BILLING_REDIS_URL``) and,
in the same run as the baseline, with each process's own memory store. With the default limit (1,200 a
minute) and N = 2,000 the shared store admits exactly 1,200; the baseline admits all 2,000 (1,000 each).

Run: ``.venv/bin/python bench/rate_limit.py [--requests 2000] [--concurrency 50] [--limit 1200]``
(PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import scratch_database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers start the processes

from billing.db import migrate
from tests.e2e.test_rate_limit_processes import REDIS_URL, hammer, issue_key, two_api_processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--limit", type=int, default=1200)
    args = parser.parse_args()
    with scratch_database("billing_bench_rl") as url:
        migrate(url)
        with tempfile.TemporaryDirectory() as tmp:
            for label, extra in (
                ("shared Redis store", {"BILLING_REDIS_URL": REDIS_URL}),
                ("baseline: memory store per process", {}),
            ):
                with two_api_processes(url, Path(tmp), limit=args.limit, **extra) as urls:
                    started = time.monotonic()
                    counts, _ = asyncio.run(hammer(urls, issue_key(url), args.requests, args.concurrency))
                    elapsed = time.monotonic() - started
                admitted = sum(n for status, n in counts.items() if status != 429)
                print(
                    f"{label:<36} limit {args.limit}/min, {args.requests} requests at concurrency "
                    f"{args.concurrency} over 2 processes: {admitted} admitted, {counts.get(429, 0)} refused "
                    f"(429) in {elapsed:.1f} s; statuses {dict(sorted(counts.items()))}"
                )


if __name__ == "__main__":
    main()
