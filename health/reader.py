"""What the health service knows: the stats table's snapshot, read by the same reader as
`appliancectl status` (supervisor/snapshot.py)."""

from supervisor.snapshot import Snapshot, StatsReader, TableReader, WorkerView

__all__ = ["Snapshot", "StatsReader", "TableReader", "WorkerView"]
