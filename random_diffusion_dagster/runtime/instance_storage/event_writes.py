"""What the two instance storages share: a batch of one kind of asset event written at once, and batches by default.

A new run hands Dagster one planned materialization per image, a first run one observation of each source's
version, and a ranged step one materialization per image. Dagster writes an event in a few statements and
transactions of its own, so a run's worth of them costs seconds (in the daemon before a run starts, in the run while
the GPU waits) that one batch saves (docs/speed.md). Dagster passes events in batches only where
DAGSTER_EVENT_BATCH_SIZE is above 0: loading either storage sets it (unless set), so every process that loads the
instance writes batches, and `0` gives the one-by-one writes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import dagster as dg
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

from ...settings import library_default

BATCH_SIZE_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"
EVENTS_PER_BATCH = 256  # Dagster hands a batch over at this many events, or at the batch's last


def write_events_in_batches() -> None:
    library_default(BATCH_SIZE_VARIABLE, str(EVENTS_PER_BATCH))


class AssetEventBatches:
    """Mixin for a SQL event log: each run of one batched kind in a batch is stored at once, in one insert and one
    transaction; other kinds, and a lone event, as the storage it is mixed into stores them."""

    batched_types: frozenset[dg.DagsterEventType]

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        for kind, same_kind in groupby(events, key=lambda event: event.get_dagster_event().event_type):
            same_kind = list(same_kind)
            if kind in self.batched_types and len(same_kind) > 1:
                self._store_asset_events(same_kind)
            else:
                super().store_event_batch(same_kind)

    def _store_asset_events(self, events: list[dg.EventLogEntry]) -> None:
        """What store_event does for each in the index, at once: the rows, their tags, each asset's latest entry.
        A batch too big for one statement fails on the insert, before anything is written, and Dagster then writes
        it one by one."""
        statement = self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id)
        with self.index_transaction() as conn:
            # One INSERT numbers its rows in their order; RETURNING's row order is not promised.
            event_ids = sorted(row[0] for row in conn.execute(statement).fetchall())
            self._store_asset_event_tags(conn, events, event_ids)
            pairs = zip(events, event_ids, strict=True)
            latest = {event.get_dagster_event().asset_key: (event, event_id) for event, event_id in pairs}
            for event, event_id in latest.values():
                self._store_asset_event(conn, event, event_id)
