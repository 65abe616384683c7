"""A terminal progress bar for long replays (``billing projections rebuild``), drawn by rich on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn


@contextmanager
def replay_progress(description: str = "replaying") -> Iterator[Callable[[int, int, int], None]]:
    """A bar over the notification log: yields ``progress(handled, position, head)`` (notifications done,
    the notification id reached, the log's last id) to call after each batch; safe from a worker thread.

    Shows the events done, the rate (events per second since the start) and the time left (rich's
    estimate from the recent rate). Drawn only on a terminal; elsewhere it prints nothing.
    """
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[handled]:,} events · {task.fields[rate]:,.0f}/s"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task = bar.add_task(description, total=None, handled=0, rate=0.0)
    started = time.monotonic()

    def progress(handled: int, position: int, head: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        bar.update(
            task, completed=position, total=max(head, position), handled=handled, rate=handled / elapsed
        )

    with bar:
        yield progress
