"""Barrier layer: authenticated encryption of every record under the cluster key."""

from strongroom.barrier.barrier import Barrier, Change, Entry, RecordTampered, Remove, Unchanged, Write

__all__ = ["Barrier", "Change", "Entry", "RecordTampered", "Remove", "Unchanged", "Write"]
