"""The SQLite store (sqlite-utils, WAL): the only package that writes SQL."""

from ._signals import DetectorLabel
from ._ids import new_id, path_hash
from ._store import PlacedTurn, Store

__all__ = ["DetectorLabel", "PlacedTurn", "Store", "new_id", "path_hash"]
