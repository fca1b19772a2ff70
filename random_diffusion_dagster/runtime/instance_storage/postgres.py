"""dagster-postgres storage that accepts the `postgresql://` URLs people type and writes a run's planned
materializations in one batch (event_writes.py).

SQLAlchemy 2.1 maps `postgresql://` to the psycopg 3 driver, which dagster-postgres does not support (its
LISTEN/NOTIFY statements fail there): this storage rewrites such URLs to `postgresql+psycopg2://`. dagster-postgres
writes a step's materializations and observations as one batch, but a new run's planned materializations one by one
(in the daemon or the webserver that creates the run, while the GPU waits); this storage writes those at once too,
and turns batches on by default (docs/speed.md). Otherwise it is dagster-postgres itself, same tables.
"""

from __future__ import annotations

import dagster as dg
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from random_diffusion_dagster.runtime.instance_storage.event_writes import AssetEventBatches, write_events_in_batches

PSYCOPG2_SCHEME = "postgresql+psycopg2"


def with_psycopg2_driver(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if separator and scheme in ("postgres", "postgresql"):
        return f"{PSYCOPG2_SCHEME}://{rest}"
    return url


class BatchingPostgresEventLogStorage(AssetEventBatches, PostgresEventLogStorage):
    """dagster-postgres's event log, storing a batch of planned materializations in one insert and one transaction;
    materializations and observations as dagster-postgres batches them."""

    batched_types = frozenset({dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED})


class BatchingPostgresStorage(DagsterPostgresStorage):
    """`storage: postgres:` (same config: `postgres_url`, or `postgres_db` with its fields) with the psycopg2 driver
    and BatchingPostgresEventLogStorage for its event log."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider=None,
    ):
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._event_log_storage = BatchingPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        write_events_in_batches()

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> BatchingPostgresStorage:
        return cls(  # dagster-postgres's own from_config_value builds its base class
            postgres_url=with_psycopg2_driver(pg_url_from_config(config_value)),  # from `postgres_db` fields too
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
        )


Psycopg2PostgresStorage = BatchingPostgresStorage  # its name in dagster.yaml files copied from earlier deploy/ folders
