"""Shared fixtures.

Integration tests need the real PostgreSQL (``BILLING_TEST_DATABASE_URL``'s server, default
127.0.0.1:5432 as root) and RabbitMQ (``BILLING_TEST_AMQP_URL``). When a service is missing they FAIL,
never skip. Each test that asks for ``database_url`` gets a fresh database cloned from a migrated
template, so tests never see each other's events.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from billing.db import migrate

ADMIN_URL = os.environ.get("BILLING_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("BILLING_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _url_for(dbname: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database used as the template of every test database (dropped at the end)."""
    name = f"billing_tpl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate(_url_for(name))
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test (dropped afterwards)."""
    name = f"billing_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    try:
        yield _url_for(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def amqp_url() -> str:
    """The RabbitMQ URL of the tests."""
    return AMQP_URL
