"""The ``eventsourcing`` library's own recorder test cases against :class:`CopyingApplicationRecorder`, on the
real PostgreSQL: ``ApplicationRecorderTestCase`` (insert/select, concurrent inserts without conflicts,
throughput) and ``NonInterleavingNotificationIDsBaseCase`` (two concurrent saves never interleave their
notification ids), each through the library's plain path and through the COPY path (``copy_threshold = 1``:
every save is copied). Each test gets a fresh database (``database_url``).
"""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)
from psycopg.conninfo import conninfo_to_dict

from billing.eventstore import EVENTS_TABLE, CopyingApplicationRecorder

pytestmark = pytest.mark.integration


class CopyingEverything(CopyingApplicationRecorder):
    """Every save, even of one event, through COPY."""

    copy_threshold = 1


class _OnFreshDatabase:
    """Opens a datastore on the test's fresh database; ``recorder_class`` is the recorder under test."""

    recorder_class: type[CopyingApplicationRecorder] = CopyingApplicationRecorder
    datastore: PostgresDatastore

    @pytest.fixture(autouse=True)
    def _datastore(self, database_url: str) -> Any:
        info = conninfo_to_dict(database_url)
        self.datastore = PostgresDatastore(
            dbname=str(info["dbname"]),
            host=str(info["host"]),
            port=str(info.get("port") or 5432),
            user=str(info.get("user") or ""),
            password=str(info.get("password") or ""),
            pool_size=4,
            max_overflow=4,
        )
        yield
        self.datastore.close()

    def create_recorder(self) -> ApplicationRecorder:
        recorder = self.recorder_class(self.datastore, events_table_name=f"{EVENTS_TABLE}_contract")
        recorder.create_table()
        return recorder


class TestPlainPath(_OnFreshDatabase, ApplicationRecorderTestCase[ApplicationRecorder]):
    pass


class TestCopyPath(_OnFreshDatabase, ApplicationRecorderTestCase[ApplicationRecorder]):
    recorder_class = CopyingEverything


class TestPlainPathNonInterleaving(_OnFreshDatabase, NonInterleavingNotificationIDsBaseCase):
    pass


class TestCopyPathNonInterleaving(_OnFreshDatabase, NonInterleavingNotificationIDsBaseCase):
    recorder_class = CopyingEverything
