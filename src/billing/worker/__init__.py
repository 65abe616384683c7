"""The sending side: the job handler, the scheduler and the process that runs them (``billing worker``).

- :mod:`billing.worker.handler` settles one SendJob delivery: business hours, queue pause and
  cancellation, gateway health, throttle, claim, render, send, record the outcome, then ack.
- :mod:`billing.worker.scheduler` resumes paused queues at ``resume_at`` and republishes due contacts
  and expired claims, from PostgreSQL only (so it survives every restart).
- :mod:`billing.worker.runner` runs both in one process.
"""
