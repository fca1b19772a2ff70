"""Dagster's embedded SQLite storage, writing a step's materializations (and a run's planned ones) in one batch.

A ranged run's step hands Dagster one materialization per image, and a new run one planned materialization per
image. Dagster's SQLite event log writes them one by one, four statements in two database files each (1.0-1.8 s
for a run of 128 on the 2-core CPU, while the GPU waits for the next run; 0.14-0.21 s as one batch);
dagster-postgres writes materializations as one batch. This is Dagster's SQLite storage, same files and layout,
with dagster-postgres's batch write: one insert into the run's file, one into the index, the latest entry from
each asset's last event.

Dagster passes events in batches only where DAGSTER_EVENT_BATCH_SIZE is above 0; loading this storage sets it
(unless set) in the process that loads it, so every process on the shipped dagster.yaml writes batches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import groupby

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData

BATCH_SIZE_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"
EVENTS_PER_BATCH = 256  # Dagster hands a batch over at this many events, or at the step output's last
# What Dagster batches and this storage writes at once: a step's output's events (materializations or
# observations), the versions of the sources a run read (file_versions.report_what_was_read) and a new run's planned
# materializations. Others in a batch (a check's planned evaluation) one by one.
BATCHED_TYPES = {
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_OBSERVATION,
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
}


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log that stores a batch of one kind of asset event in two transactions."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        for kind, same_kind in groupby(events, key=lambda event: event.get_dagster_event().event_type):
            same_kind = list(same_kind)
            if kind in BATCHED_TYPES and len(same_kind) > 1:
                self._store_asset_events(same_kind)
            else:
                super().store_event_batch(same_kind)  # one by one, as Dagster's SQLite storage does

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        """What store_event does for each, at once: the run's own file first, then the cross-run index with its
        tags and each asset's latest entry. A batch too big for one statement fails on the first insert, before
        anything is written, and Dagster writes it one by one."""
        by_run: dict[str, list[EventLogEntry]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(event)
        for run_id, run_events in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(self.prepare_insert_event_batch(run_events))
        statement = self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id)
        with self.index_transaction() as conn:
            # One INSERT under the write lock numbers its rows in order; RETURNING's row order is not promised.
            event_ids = sorted(row[0] for row in conn.execute(statement).fetchall())
            self._store_asset_event_tags(conn, events, event_ids)
            pairs = zip(events, event_ids, strict=True)
            latest = {event.get_dagster_event().asset_key: (event, event_id) for event, event_id in pairs}
            for event, event_id in latest.values():
                self._store_asset_event(conn, event, event_id)


class BatchingSqliteStorage(DagsterSqliteStorage):
    """`storage: sqlite:` with BatchingSqliteEventLogStorage for its event log; same config (`base_dir`)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = BatchingSqliteEventLogStorage(_event_logs_directory(base_dir))
        os.environ.setdefault(BATCH_SIZE_VARIABLE, str(EVENTS_PER_BATCH))

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, str]
    ) -> BatchingSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)
