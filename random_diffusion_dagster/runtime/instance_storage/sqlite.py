"""Dagster's embedded SQLite storage, writing a run's planned materializations, its sources' versions and its
materializations each in one batch (event_writes.py).

Dagster's SQLite event log writes them one by one, four statements in two database files each, a run's worth in
seconds while the GPU waits (docs/speed.md). This is Dagster's SQLite storage, same files and layout, with
dagster-postgres's batch write: one insert into the run's file, one into the index, the latest entry from each
asset's last event.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData

from random_diffusion_dagster.runtime.instance_storage.event_writes import AssetEventBatches, write_events_in_batches


class BatchingSqliteEventLogStorage(AssetEventBatches, SqliteEventLogStorage):
    """SQLite event log that stores a batch of one kind of asset event in two transactions."""

    batched_types = frozenset(
        {
            dg.DagsterEventType.ASSET_MATERIALIZATION,
            dg.DagsterEventType.ASSET_OBSERVATION,
            dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        }
    )

    def _store_asset_events(self, events: list[dg.EventLogEntry]) -> None:
        """Into each run's own file first, then into the cross-run index."""
        by_run: dict[str, list[dg.EventLogEntry]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(event)
        for run_id, run_events in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(self.prepare_insert_event_batch(run_events))
        super()._store_asset_events(events)


class BatchingSqliteStorage(DagsterSqliteStorage):
    """`storage: sqlite:` with BatchingSqliteEventLogStorage for its event log; same config (`base_dir`)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = BatchingSqliteEventLogStorage(_event_logs_directory(base_dir))
        write_events_in_batches()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, str]
    ) -> BatchingSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)
