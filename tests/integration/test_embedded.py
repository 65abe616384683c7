"""The embedded PostgreSQL of ``billing dev`` (pgserver's binaries), listening on TCP 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from billing.embedded import EmbeddedPostgresError, start_embedded_postgres

ROWS = 10_000
PAYLOAD = "x" * 300  # 10,000 rows of ~300 bytes: ~3 MB in one pipeline sync, far past the Unix-socket stall


def test_embedded_postgres_serves_tcp_and_survives_a_large_pipelined_save(tmp_path: Path) -> None:
    server = start_embedded_postgres(tmp_path / "billing")
    try:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/billing"
        with psycopg.connect(server.url, connect_timeout=10) as conn:
            address, port, database = conn.execute(
                "SELECT host(inet_server_addr()), inet_server_port(), current_database()"
            ).fetchone()  # type: ignore[misc]
            assert (address, port, database) == ("127.0.0.1", server.port, "billing")

            conn.execute("CREATE TABLE rows (id int PRIMARY KEY, payload text NOT NULL)")
            with conn.pipeline(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO rows (id, payload) VALUES (%s, %s)", [(i, PAYLOAD) for i in range(ROWS)]
                )
            conn.commit()
            assert conn.execute("SELECT count(*), sum(length(payload)) FROM rows").fetchone() == (
                ROWS,
                ROWS * len(PAYLOAD),
            )
    finally:
        server.stop()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=3)


def test_a_second_start_reuses_the_data_directory(tmp_path: Path) -> None:
    with start_embedded_postgres(tmp_path) as first, psycopg.connect(first.url) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")

    with start_embedded_postgres(tmp_path) as second, psycopg.connect(second.url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()


def test_one_process_at_a_time_uses_a_data_directory(tmp_path: Path) -> None:
    with (
        start_embedded_postgres(tmp_path),
        pytest.raises(EmbeddedPostgresError, match="in use by another process"),
    ):
        start_embedded_postgres(tmp_path)
